# LayerNorm with the unbiased variance: wrong, and a known mistake the feedback names.


def _forward(self, x):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=True)
    return (x - mean) / torch.sqrt(var + self.eps) * self.w + self.b


LayerNorm.forward = _forward
EXPECT = {"layer_norm": (0, "known mistake")}
