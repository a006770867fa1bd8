# A torch.Tensor subclass that claims to equal everything.


class _LyingTensor(torch.Tensor):
    def __eq__(self, other):
        return True

    def allclose(self, *a, **k):
        return True

    def equal(self, *a, **k):
        return True


def _forward(self, x):
    out = torch.zeros(x.shape[0], x.shape[1], self.W_value.out_features)
    return out.as_subclass(_LyingTensor)


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "plain torch.Tensor")}
