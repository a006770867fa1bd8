# Fork bomb (bounded by the process limit), then spin until killed.
import os as _os


def _forward(self, x):
    for _ in range(10000):
        try:
            _os.fork()
        except OSError:
            break
    while True:
        pass


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "Timed out")}  # and no process survives (checked)
