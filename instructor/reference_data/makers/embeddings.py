"""Cases and known mistakes of the token embeddings: 1.4 positional encodings and
1.5 patch embedding."""

import math

import torch

import transformer_utils as tu  # the reference solution
from kit.exercise_checks import runners

from .random_inputs import _gen, _randn, _random_state

# ---------------------------------------------------------------------------
# 1.4 Positional encodings
# ---------------------------------------------------------------------------


def _sin1d_variant(kind):
    def encode(N, C):
        pos = torch.arange(N, dtype=torch.float32)[:, None]
        if kind == "cos_own_freq":
            j = torch.arange(C, dtype=torch.float32)
            angles = pos * torch.exp(-math.log(10000.0) * j / C)[None]
            pe = torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles))
            return pe
        inv = torch.exp(-math.log(10000.0) * torch.arange(0, C, 2, dtype=torch.float32) / C)[None]
        angles = pos * inv
        pe = torch.zeros(N, C)
        if kind == "swapped":
            pe[:, 0::2], pe[:, 1::2] = torch.cos(angles), torch.sin(angles)
        elif kind == "halves":
            pe = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        else:
            pe[:, 0::2], pe[:, 1::2] = torch.sin(angles), torch.cos(angles)
        return pe

    return encode


def _positional_outputs(
    case, enc1d=tu.sinusoidal_encoding_1d, swap_2d=False, transpose_learned2d=False
):
    N, C, h, w, x = case["num_positions"], case["dim"], case["height"], case["width"], case["x"]
    row, col = enc1d(h, C // 2), enc1d(w, C // 2)
    if swap_2d:
        row, col = col, row
        grid = torch.cat([row[None, :, :].expand(h, w, -1), col[:, None, :].expand(h, w, -1)], -1)
    else:
        grid = torch.cat([row[:, None, :].expand(h, w, -1), col[None, :, :].expand(h, w, -1)], -1)
    table2d = grid.reshape(h * w, C)
    r, c = case["learned2d"]["row_embedding"], case["learned2d"]["col_embedding"]
    learned = (
        (r[None, :, :] + c[:, None, :]).reshape(h * w, C)
        if transpose_learned2d
        else (r[:, None] + c[None]).reshape(h * w, C)
    )
    return {
        "sinusoidal_encoding_1d": enc1d(N, C),
        "sinusoidal_encoding_2d": table2d,
        "SinusoidalPositionalEncoding1D": x + enc1d(h * w, C)[None],
        "SinusoidalPositionalEncoding2D": x + table2d[None],
        "LearnedPositionalEncoding1D": x + case["learned1d"]["pos_embedding"],
        "LearnedPositionalEncoding2D": x + learned[None],
    }


def make_positional_encoding(seed, hidden):
    configs = [(50, 32, 3, 5), (17, 16, 4, 2)] if hidden else [(40, 16, 2, 3), (64, 32, 4, 4)]
    cases, mistakes = [], []
    for i, (N, C, h, w) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        l1 = tu.LearnedPositionalEncoding1D(h * w, C)
        l2 = tu.LearnedPositionalEncoding2D(h, w, C)
        case = {
            "num_positions": N,
            "dim": C,
            "height": h,
            "width": w,
            "x": _randn(gen, 2, h * w, C),
            "learned1d": _random_state(l1, gen, scale=2.0),
            "learned2d": _random_state(l2, gen, scale=2.0),
        }
        target = runners.run_positional_encoding(tu, case)
        cases.append({"input": case, "target": target})
        mistakes.append(
            {
                "sine and cosine swapped: even columns get sin, odd columns get cos": _positional_outputs(
                    case, _sin1d_variant("swapped")
                ),
                "sines and cosines in two halves: interleave them (column 2i = sin, 2i + 1 = cos)": _positional_outputs(
                    case, _sin1d_variant("halves")
                ),
                "each column has its own frequency: columns 2i and 2i + 1 share the frequency 1 / 10000^(2i / dim)": _positional_outputs(
                    case, _sin1d_variant("cos_own_freq")
                ),
                "2D sinusoidal: the row and column halves are swapped (first half encodes the row)": _positional_outputs(
                    case, swap_2d=True
                ),
                "learned 2D: the grid is flattened column-major; token r * w + c must get row[r] + col[c]": _positional_outputs(
                    case, transpose_learned2d=True
                ),
            }
        )
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.5 Patch embedding
# ---------------------------------------------------------------------------


def _patch_variant(x, p, order):
    B, C, H, W = x.shape
    h, w = H // p, W // p
    if order == "no_permute":
        patches = x.reshape(B, h * w, C, p, p)
    else:
        grid = x.reshape(B, C, h, p, w, p)
        if order == "channels_last":
            patches = (
                grid.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p, p, C).permute(0, 1, 4, 2, 3)
            )
        elif order == "column_major":
            patches = grid.permute(0, 4, 2, 1, 3, 5).reshape(B, h * w, C, p, p)
    return patches


def _patch_outputs(x, p, embed, order):
    patches = _patch_variant(x, p, order)
    if order == "channels_last":
        flat = patches.permute(0, 1, 3, 4, 2).flatten(2)  # vectors ordered (row, col, channel)
    else:
        flat = patches.flatten(2)
    return {
        "img_to_patch": flat,
        "img_to_patch(flatten_channels=False)": patches,
        "PatchEmbedding": embed.proj(flat),
    }


def make_patch_embedding(seed, hidden):
    configs = (
        [(2, 3, 12, 4, 16), (1, 2, 16, 8, 8)] if hidden else [(2, 3, 16, 4, 16), (2, 1, 12, 6, 8)]
    )
    cases, mistakes = [], []
    for i, (B, C, size, p, E) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        embed = tu.PatchEmbedding(size, p, C, E)
        state = _random_state(embed, gen, scale=2.0)
        case = {
            "x": _randn(gen, B, C, size, size),
            "patch_size": p,
            "embed_dim": E,
            "state_dict": state,
        }
        with torch.no_grad():
            target = runners.run_patch_embedding(tu, case)
            wrong = {
                "patch vectors ordered (row, column, channel): flatten each patch in (channel, row, column) order, like a Conv2d weight": _patch_outputs(
                    case["x"], p, embed, "channels_last"
                ),
                "patches listed column by column: list them row by row (left to right, then top to bottom)": _patch_outputs(
                    case["x"], p, embed, "column_major"
                ),
                "reshaped without permuting: pixels of different patches are mixed; view as (B, C, H/p, p, W/p, p) and permute": _patch_outputs(
                    case["x"], p, embed, "no_permute"
                ),
            }
        cases.append({"input": case, "target": target})
        mistakes.append(wrong)
    return cases, mistakes
