"""The scale applied to Q before the product; torch.matmul with permute(0, 2, 1)."""

import math

import torch


def forward(self, x):
    q = self.W_query(x) / math.sqrt(self.query_dim)
    k = self.W_key(x)
    v = self.W_value(x)
    weights = torch.softmax(torch.matmul(q, k.permute(0, 2, 1)), dim=2)
    return torch.matmul(weights, v)
