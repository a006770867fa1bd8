"""Cases and known mistakes of 1.9 Conv2d (forward and backward)."""

import torch
import torch.nn.functional as F

import transformer_utils as tu  # the reference solution
from kit.exercise_checks import runners

from .random_inputs import _gen, _randn


def _conv_outputs(inp, flip=False, no_bias=False, mean_bias_grad=False, mean_weight_grad=False):
    x = inp["x"].clone().requires_grad_(True)
    w = inp["weight"].clone().requires_grad_(True)
    b = None if inp["bias"] is None else inp["bias"].clone().requires_grad_(True)
    kernel = w.flip(-1, -2) if flip else w
    # The wrong variants may use torch's conv: this file is never shipped.
    out = F.conv2d(x, kernel, None if no_bias else b, inp["stride"], inp["padding"])
    out.backward(inp["grad_out"])
    result = {"out": out.detach(), "grad_x": x.grad, "grad_weight": w.grad}
    if mean_weight_grad:
        result["grad_weight"] = w.grad / x.shape[0]
    if b is not None:
        grad_b = inp["grad_out"].sum((0, 2, 3))
        if no_bias:
            grad_b = torch.zeros_like(grad_b)
        if mean_bias_grad:
            grad_b = inp["grad_out"].mean((0, 2, 3))
        result["grad_bias"] = grad_b
    return result


def make_conv2d(seed, hidden):
    # (B, C, H, W, C_out, kernel, stride, padding, bias)
    if hidden:
        configs = [
            (2, 3, 7, 7, 4, (3, 3), 1, 1, True),
            (1, 2, 9, 6, 3, (2, 3), (2, 1), (0, 1), True),
            (2, 4, 5, 5, 2, (1, 1), 1, 0, False),
        ]
    else:
        configs = [
            (2, 3, 8, 8, 4, (3, 3), 1, 0, True),
            (2, 2, 7, 9, 3, (3, 2), 2, 1, True),
            (1, 3, 6, 6, 5, (2, 2), (1, 2), (1, 0), False),
        ]
    cases, mistakes = [], []
    for i, (B, C, H, W, C_out, kernel, stride, padding, bias) in enumerate(configs):
        gen = _gen(seed + i)
        x = _randn(gen, B, C, H, W)
        weight = _randn(gen, C_out, C, *kernel, scale=0.5)
        b = _randn(gen, C_out) if bias else None
        out_shape = F.conv2d(x, weight, b, stride, padding).shape
        inp = {
            "x": x,
            "weight": weight,
            "bias": b,
            "stride": stride,
            "padding": padding,
            "grad_out": _randn(gen, *out_shape),
        }
        target = runners.run_conv2d(tu, inp)
        wrong = {
            "the kernel is flipped (true convolution): nn.Conv2d computes a cross-correlation, no flip": _conv_outputs(
                inp, flip=True
            ),
            "the weight gradient is averaged over the batch: sum the per-image gradients": (
                _conv_outputs(inp, mean_weight_grad=True)
            ),
        }
        if bias:
            wrong["the bias is not added in forward"] = _conv_outputs(inp, no_bias=True)
            wrong["the bias gradient is averaged: sum grad_out over batch and positions"] = (
                _conv_outputs(inp, mean_bias_grad=True)
            )
        cases.append({"input": inp, "target": target})
        mistakes.append(wrong)
    return cases, mistakes
