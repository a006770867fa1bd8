"""torch.var_mean (correction=0) and a multiplication by rsqrt(var + eps)."""

import torch


def forward(self, x):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + self.eps) * self.w + self.b
