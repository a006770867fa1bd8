"""x.std(unbiased=False), squared back inside the square root."""

import torch


def forward(self, x):
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, keepdim=True, unbiased=False)
    x_hat = (x - mean) / torch.sqrt(std**2 + self.eps)
    return torch.addcmul(self.b, x_hat, self.w)
