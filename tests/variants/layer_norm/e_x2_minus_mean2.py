"""The variance as E[x^2] - mean^2: correct, but it loses digits when |mean| >> std."""

import torch

PRECISION_NOTE = (
    "cancellation in E[x^2] - mean^2: when the mean is large compared with the spread, "
    "E[x^2] and mean^2 are nearly equal and their difference loses digits; "
    "((x - mean) ** 2).mean() keeps them"
)


def forward(self, x):
    mean = x.mean(dim=-1, keepdim=True)
    var = (x**2).mean(dim=-1, keepdim=True) - mean**2
    return self.w * (x - mean) / torch.sqrt(var + self.eps) + self.b
