# Never return.


def _forward(self, x):
    while True:
        pass


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "Timed out")}  # layer_norm still graded, in a fresh process
