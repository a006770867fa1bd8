"""The scale applied to K, as a multiplication by rsqrt(query_dim); torch.bmm."""

import torch


def forward(self, x):
    q = self.W_query(x)
    k = self.W_key(x) * torch.rsqrt(torch.tensor(float(self.query_dim)))
    v = self.W_value(x)
    return torch.bmm(self.softmax(torch.bmm(q, k.transpose(1, 2))), v)
