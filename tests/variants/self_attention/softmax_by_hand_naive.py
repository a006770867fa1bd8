"""A hand-written softmax without the maximum subtracted (fine while the scores are small)."""


def forward(self, x):
    q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
    e = (q @ k.transpose(1, 2) / self.query_dim**0.5).exp()
    return (e / e.sum(-1, keepdim=True)) @ v
