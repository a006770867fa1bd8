"""Cases and known mistakes of 1.2 LayerNorm."""

import functools

import torch

from ..tolerances import _exact_target
from .random_inputs import _gen, _randn


def _layer_norm_variant(
    x,
    w,
    b,
    eps=1e-5,
    unbiased=False,
    eps_outside=False,
    dims=(-1,),
    affine=True,
    kind="ok",
):
    if kind == "affine_first":
        x, affine = x * w + b, False
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    std = torch.sqrt(var) + eps if eps_outside else torch.sqrt(var + eps)
    if kind == "divide_var":
        std = var + eps
    elif kind == "sqrt_std":
        std = torch.sqrt(torch.sqrt(var) + eps)
    elif kind == "rms":
        mean, std = 0.0, torch.sqrt((x**2).mean(dim=dims, keepdim=True) + eps)
    x_hat = (x if kind == "no_centre" else x - mean) / std
    if kind == "bias_first":
        return (x_hat + b) * w
    return x_hat * w + b if affine else x_hat


def layer_norm_mistakes(x, w, b):
    """Outputs of the typical wrong LayerNorm implementations on one case."""
    v = functools.partial(_layer_norm_variant, x, w, b)
    return {
        "unbiased variance (divides by C - 1): use the biased variance, unbiased=False": v(
            unbiased=True
        ),
        "eps outside the square root: use sqrt(var + eps), not sqrt(var) + eps": v(
            eps_outside=True
        ),
        "eps is missing: use sqrt(var + eps)": v(eps=0.0),
        "wrong normalisation dimension: mean and variance must be over the channels (last "
        "dim), not the tokens (dim 1)": v(dims=(1,)),
        "normalised over all of (T, C): normalise each token separately over its channels": v(
            dims=(1, 2)
        ),
        "statistics over the batch (dim 0), as BatchNorm: take the mean and variance of each "
        "token over its own channels (dim -1)": v(dims=(0,)),
        "per-channel statistics over every token of the batch (dims 0 and 1), as BatchNorm: "
        "take them over the channels of each token (dim -1)": v(dims=(0, 1)),
        "the affine parameters are forgotten: multiply by self.w and add self.b": v(affine=False),
        "w and b are swapped": _layer_norm_variant(x, b, w),
        "divided by the variance: divide by the standard deviation sqrt(var + eps)": v(
            kind="divide_var"
        ),
        "the square root is taken twice (sqrt(std + eps)): divide by sqrt(var + eps)": v(
            kind="sqrt_std"
        ),
        "the mean is not subtracted: normalise x - mean, not x": v(kind="no_centre"),
        "RMSNorm instead of LayerNorm (x / sqrt(mean(x^2) + eps)): subtract the mean and "
        "divide by sqrt(var + eps)": v(kind="rms"),
        "the bias is added before the scale ((x_hat + b) * w): compute x_hat * w + b": v(
            kind="bias_first"
        ),
        "w and b are applied before normalising: normalise first, then x_hat * w + b": v(
            kind="affine_first"
        ),
    }


def make_layer_norm(seed, hidden):
    if hidden:
        shapes = [(16, 9, 24), (4, 20, 24), (16, 5, 48), (8, 11, 24), (6, 7, 40)]
    else:
        shapes = [(32, 12, 16), (8, 18, 16), (32, 6, 32), (16, 10, 16), (8, 12, 32)]
    # Case 3 is hard on purpose: its mean is about 20 times its spread, so a correct
    # E[x^2] - mean^2 loses digits there (and gets full marks with a note). Cases 4 and 5
    # have a tiny variance, where eps matters.
    scales = [1.0, 3.0, 0.5, 1e-3, 2e-3]
    offsets = [0.0, 1.0, -10.0, 0.0, 0.0]
    cases, mistakes = [], []
    for i, (shape, scale, offset) in enumerate(zip(shapes, scales, offsets)):
        gen = _gen(seed + i)
        C = shape[-1]
        x = _randn(gen, *shape, scale=scale) + offset
        w = 1.0 + _randn(gen, C, scale=0.5)
        b = _randn(gen, C, scale=0.5)
        case_input = {"x": x, "w": w, "b": b}
        cases.append({"input": case_input, "target": _exact_target("layer_norm", case_input)})
        mistakes.append(layer_norm_mistakes(x, w, b))
    return cases, mistakes
