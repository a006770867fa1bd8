"""Sums divided by C, centred values reused, parameters reshaped to (1, 1, C) explicitly."""

import torch


def forward(self, x):
    C = x.shape[-1]
    centred = x - x.sum(dim=-1, keepdim=True) / C
    var = (centred * centred).sum(dim=-1, keepdim=True) / C
    std = torch.sqrt(var + self.eps)
    return centred / std * self.w.view(1, 1, -1) + self.b.view(1, 1, -1)
