# Print about 20 MB (stdout and stderr), then return the correct answer.
import sys as _sys

_reference_forward = SelfAttention.forward


def _forward(self, x):
    chunk = "flood " * 170000
    for _ in range(10):
        _sys.stdout.write(chunk)
        _sys.stderr.write(chunk)
    return _reference_forward(self, x)


SelfAttention.forward = _forward
EXPECT = {}  # full marks; the output is captured and capped (checked)
