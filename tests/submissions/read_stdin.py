# Wait for input on stdin (would hang forever if stdin were a terminal or a pipe).
import sys as _sys

_reference_forward = SelfAttention.forward


def _forward(self, x):
    data = _sys.stdin.read()
    if data:
        raise RuntimeError("stdin had data")
    return _reference_forward(self, x)


SelfAttention.forward = _forward
EXPECT = {}  # stdin is /dev/null: reads end at once, full marks
