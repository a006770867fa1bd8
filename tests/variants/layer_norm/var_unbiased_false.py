"""x.var(unbiased=False) and a division by sqrt(var + eps)."""

import torch


def forward(self, x):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + self.eps) * self.w + self.b
