"""E[x * x] - mean.pow(2) with an rsqrt multiply: also loses digits when |mean| >> std."""

import torch

PRECISION_NOTE = (
    "cancellation in E[x^2] - mean^2: when the mean is large compared with the spread, "
    "E[x^2] and mean^2 are nearly equal and their difference loses digits; "
    "((x - mean) ** 2).mean() keeps them"
)


def forward(self, x):
    mean = torch.mean(x, -1, keepdim=True)
    var = torch.mean(x * x, -1, keepdim=True) - mean.pow(2)
    return (x - mean) * torch.rsqrt(var + self.eps) * self.w + self.b
