"""Seeded random inputs and weights shared by the case generators."""

import math
from collections import OrderedDict

import torch


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).contiguous()


def _random_state(module, gen, scale=0.5):
    """Replace every parameter by a seeded random tensor (norm weights around 1)."""
    state = OrderedDict()
    for name, p in module.state_dict().items():
        if name.endswith(".w") or name == "w" or name.endswith("norm_weight"):
            state[name] = 1.0 + _randn(gen, *p.shape, scale=0.2)
        else:
            state[name] = _randn(gen, *p.shape, scale=scale / math.sqrt(max(p.shape[-1], 1)))
    module.load_state_dict(state)
    return state


def _random_mask(gen, *shape):
    """Bool mask (True = may attend) with at least one True and one False per row."""
    mask = torch.rand(*shape, generator=gen) > 0.5
    cols = shape[-1]
    first = torch.randint(0, cols, shape[:-1], generator=gen)
    mask.scatter_(-1, first[..., None], True)
    second = (first + 1 + torch.randint(0, cols - 1, shape[:-1], generator=gen)) % cols
    mask.scatter_(-1, second[..., None], False)
    return mask
