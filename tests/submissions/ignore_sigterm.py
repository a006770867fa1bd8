# Ignore SIGTERM (and SIGINT) and sleep forever.
import signal as _signal
import time as _time


def _forward(self, x):
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    while True:
        _time.sleep(1)


LayerNorm.forward = _forward
EXPECT = {"layer_norm": (0, "Timed out")}
