# Fork, and let every process fill 1 GB of real memory: per-process limits alone would let
# the machine run out; the sandbox's memory cgroup (where available) stops it.
import os as _os
import time as _time


def _forward(self, x):
    for _ in range(6):
        try:
            if _os.fork() == 0:
                break
        except OSError:
            break
    hog = torch.ones(256 * 1024 * 1024)  # 1 GB, touched
    while True:
        _time.sleep(1)


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "")}  # and layer_norm still passes: the supervisor survives
