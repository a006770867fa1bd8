"""The @ operator with transpose(-2, -1), the scale applied to the scores."""

import math


def forward(self, x):
    q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
    scores = q @ k.transpose(-2, -1) / math.sqrt(self.query_dim)
    return self.softmax(scores) @ v
