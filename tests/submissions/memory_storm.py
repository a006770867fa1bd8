# Allocate memory until something gives (256 MB tensors, kept alive).


def _forward(self, x):
    hoard = []
    while True:
        hoard.append(torch.empty(64 * 1024 * 1024))


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "out of memory")}
