# Return an object whose equality (and closeness) always holds.


class _Liar:
    shape = property(lambda self: (8, 10, 96))
    dtype = torch.float32

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    def __array__(self, *a, **k):
        import numpy

        return numpy.zeros((1,))

    def __getattr__(self, name):
        return lambda *a, **k: self


def _forward(self, x):
    return _Liar()


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "expected a torch.Tensor")}
