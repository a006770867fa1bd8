"""Regenerate the reference data of the exercise bank from the reference solution.

    python -m instructor.reference_data            # writes both sets below
    python -m instructor.reference_data --split public --out_dir /tmp/x

* public: ``test_data/<id>.pkl`` (ships to students) and ``test_data/<id>_mistakes.pkl``
* hidden: ``autograder/reference_data/<id>.pkl`` (+ ``_mistakes.pkl``): other seeds and
  shapes, used only by the autograder.

``<id>.pkl`` is a pickled list of cases ``{"input": {...}, "target": ...}`` (float32 CPU
tensors; targets are a tensor or a dict of tensors). ``<id>_mistakes.pkl`` is a list
aligned with the cases, each a dict ``{"description of a known mistake": output}``: the
output that a typical wrong implementation produces on that case, so that the student
tests can name the mistake. The wrong implementations live only here (never shipped).

Everything is seeded and computed with deterministic CPU ops, and pickled with a fixed
protocol and tensors stored by value (see _ReproduciblePickler), so a rerun writes
byte-identical files. ``generate`` checks that the
student runners of test_functions.py reproduce every target from the reference
solution and that every stored mistake is distinguishable from the target.
"""

import argparse
import io
import math
import os
import pickle
import sys
from collections import OrderedDict

import numpy
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import test_functions  # noqa: E402  (the student runners and the comparison)
import transformer_utils as tu  # noqa: E402  (the reference solution)

PICKLE_PROTOCOL = 4
OUT_DIRS = {
    "public": os.path.join(ROOT, "test_data"),
    "hidden": os.path.join(ROOT, "autograder", "reference_data"),
}
SEEDS = {"public": 1000, "hidden": 2000}


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).contiguous()


def _clean(value):
    """Detached, contiguous, own-storage copies, so pickles are small and reproducible."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().contiguous()
    if isinstance(value, OrderedDict):
        return OrderedDict((k, _clean(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clean(v) for v in value)
    return value


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


# ---------------------------------------------------------------------------
# 1.1 SelfAttention
# ---------------------------------------------------------------------------


def _self_attention_variant(x, sd, scale="sqrt", softmax_dim=2, kq=False, softmax=True):
    q = x @ sd["W_query.weight"].t() + sd["W_query.bias"]
    k = x @ sd["W_key.weight"].t() + sd["W_key.bias"]
    v = x @ sd["W_value.weight"].t() + sd["W_value.bias"]
    scores = k @ q.transpose(1, 2) if kq else q @ k.transpose(1, 2)
    dq, dv = q.shape[-1], v.shape[-1]
    scores = scores / {"sqrt": math.sqrt(dq), "none": 1.0, "dim": dq, "value": math.sqrt(dv)}[scale]
    weights = scores.softmax(dim=softmax_dim) if softmax else scores
    return weights @ v


def make_self_attention(seed, hidden):
    B, T, Din, Dq, Dv = (4, 7, 24, 32, 40) if hidden else (8, 10, 16, 64, 96)
    cases, mistakes = [], []
    for i in range(5):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        model = tu.SelfAttention(Din, Dq, Dq, Dv)
        state = _random_state(model, gen, scale=2.0)
        x = _randn(gen, B, T, Din)
        with torch.no_grad():
            target = model(x)
        cases.append({"input": {"x": x, "weight": state}, "target": target})
        mistakes.append(
            {
                "the scores are not scaled: divide Q K^T by sqrt(query_dim)": _self_attention_variant(
                    x, state, scale="none"
                ),
                "the scores are divided by query_dim instead of sqrt(query_dim)": _self_attention_variant(
                    x, state, scale="dim"
                ),
                "the scores are scaled by sqrt(value_dim) instead of sqrt(query_dim)": _self_attention_variant(
                    x, state, scale="value"
                ),
                "softmax over the wrong dimension: normalise over the keys (dim 2), not the queries (dim 1)": _self_attention_variant(
                    x, state, softmax_dim=1
                ),
                "K Q^T computed instead of Q K^T (the attention matrix is transposed)": _self_attention_variant(
                    x, state, kq=True
                ),
                "the softmax is missing": _self_attention_variant(x, state, softmax=False),
            }
        )
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.2 LayerNorm
# ---------------------------------------------------------------------------


def _layer_norm_variant(
    x, w, b, eps=1e-5, unbiased=False, eps_outside=False, dims=(-1,), affine=True
):
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    std = torch.sqrt(var) + eps if eps_outside else torch.sqrt(var + eps)
    x_hat = (x - mean) / std
    return x_hat * w + b if affine else x_hat


def make_layer_norm(seed, hidden):
    if hidden:
        shapes = [(16, 9, 24), (4, 20, 24), (16, 5, 48), (8, 11, 24), (6, 7, 40)]
    else:
        shapes = [(32, 12, 16), (8, 18, 16), (32, 6, 32), (16, 10, 16), (8, 12, 32)]
    # Cases 4 and 5 have a tiny variance (where eps matters) and a large offset.
    scales = [1.0, 3.0, 0.5, 1e-3, 2e-3]
    offsets = [0.0, 1.0, -2.0, 0.0, 0.0]
    cases, mistakes = [], []
    for i, (shape, scale, offset) in enumerate(zip(shapes, scales, offsets)):
        gen = _gen(seed + i)
        C = shape[-1]
        x = _randn(gen, *shape, scale=scale) + offset
        w = 1.0 + _randn(gen, C, scale=0.5)
        b = _randn(gen, C, scale=0.5)
        norm = tu.LayerNorm(C)
        norm.w, norm.b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
        with torch.no_grad():
            target = norm(x)
        cases.append({"input": {"x": x, "w": w, "b": b}, "target": target})
        mistakes.append(
            {
                "unbiased variance (divides by C - 1): use the biased variance, unbiased=False": _layer_norm_variant(
                    x, w, b, unbiased=True
                ),
                "eps outside the square root: use sqrt(var + eps), not sqrt(var) + eps": _layer_norm_variant(
                    x, w, b, eps_outside=True
                ),
                "eps is missing: use sqrt(var + eps)": _layer_norm_variant(x, w, b, eps=0.0),
                "wrong normalisation dimension: mean and variance must be over the channels (last dim), not the tokens (dim 1)": _layer_norm_variant(
                    x, w, b, dims=(1,)
                ),
                "normalised over all of (T, C): normalise each token separately over its channels": _layer_norm_variant(
                    x, w, b, dims=(1, 2)
                ),
                "the affine parameters are forgotten: multiply by self.w and add self.b": _layer_norm_variant(
                    x, w, b, affine=False
                ),
                "w and b are swapped": _layer_norm_variant(x, b, w),
            }
        )
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.3 MultiHeadAttention
# ---------------------------------------------------------------------------


def _mha_variant(
    m,
    query,
    key,
    value,
    mask,
    scale="head",
    softmax_dim=-1,
    invert=False,
    split="ok",
    out_proj=True,
):
    B, T, E = query.shape
    S = key.shape[1]
    H, D = m.num_heads, m.head_dim

    def heads(t, n):
        if split == "no_transpose":
            return t.reshape(B, H, n, D)
        return t.reshape(B, n, H, D).transpose(1, 2)

    q, k, v = heads(m.q_proj(query), T), heads(m.k_proj(key), S), heads(m.v_proj(value), S)
    scores = (
        q @ k.transpose(-2, -1) / {"head": math.sqrt(D), "none": 1.0, "embed": math.sqrt(E)}[scale]
    )
    if mask is not None:
        mask = mask[:, None] if mask.dim() == 3 else mask
        scores = scores.masked_fill(mask if invert else ~mask, float("-inf"))
    attn = scores.softmax(dim=softmax_dim)
    out = attn @ v
    out = out.reshape(B, T, E) if split == "no_transpose" else out.transpose(1, 2).reshape(B, T, E)
    return {"out": m.out_proj(out) if out_proj else out, "attention": attn}


def make_multi_head_attention(seed, hidden):
    # (B, T, S, E, H, mask kind, cross-attention)
    if hidden:
        configs = [
            (2, 6, 6, 24, 3, None, False),
            (3, 5, 5, 24, 4, "2d", False),
            (2, 4, 7, 16, 2, "3d", True),
            (2, 5, 3, 32, 4, None, True),
        ]
    else:
        configs = [
            (2, 5, 5, 16, 2, None, False),
            (2, 6, 6, 32, 4, "2d", False),
            (3, 4, 6, 16, 4, "3d", True),
            (2, 3, 5, 24, 3, None, True),
        ]
    cases, mistakes = [], []
    for i, (B, T, S, E, H, mask_kind, cross) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        m = tu.MultiHeadAttention(E, H).eval()
        state = _random_state(m, gen, scale=2.0)
        query = _randn(gen, B, T, E)
        key = _randn(gen, B, S, E) if cross else query
        value = _randn(gen, B, S, E) if cross else query
        mask = None
        if mask_kind == "2d":
            mask = _random_mask(gen, T, S)
        elif mask_kind == "3d":
            mask = _random_mask(gen, B, T, S)
        with torch.no_grad():
            out, attn = m(query, key, value, mask, return_attention=True)
            wrong = {
                "the scores are not scaled: divide by sqrt(head_dim)": _mha_variant(
                    m, query, key, value, mask, scale="none"
                ),
                "the scores are scaled by sqrt(embed_dim) instead of sqrt(head_dim)": _mha_variant(
                    m, query, key, value, mask, scale="embed"
                ),
                "softmax over the wrong dimension: normalise over the keys (last dim)": _mha_variant(
                    m, query, key, value, mask, softmax_dim=-2
                ),
                "heads split with a plain reshape to (B, H, T, D): reshape to (B, T, H, D), then transpose": _mha_variant(
                    m, query, key, value, mask, split="no_transpose"
                ),
                "the output projection out_proj is not applied": _mha_variant(
                    m, query, key, value, mask, out_proj=False
                ),
            }
            if mask is not None:
                wrong[
                    "inverted mask: True means 'may attend', so block the positions where the mask is False"
                ] = _mha_variant(m, query, key, value, mask, invert=True)
                wrong["the mask is ignored"] = _mha_variant(m, query, key, value, None)
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "state_dict": state,
            "query": query,
            "key": key,
            "value": value,
            "attn_mask": mask,
        }
        cases.append({"input": case_input, "target": {"out": out, "attention": attn}})
        mistakes.append(wrong)
    return cases, mistakes


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
        target = test_functions.run_positional_encoding(tu, case)
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
            target = test_functions.run_patch_embedding(tu, case)
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


# ---------------------------------------------------------------------------
# 1.6 / 1.7 Encoder and decoder layers
# ---------------------------------------------------------------------------


def _encoder_variant(layer, x, mask, kind):
    attn_fn = layer.attn
    if kind == "post_ln":
        h, attn = attn_fn(x, x, x, attn_mask=mask, return_attention=True)
        x = layer.norm1(x + h)
        return {"out": layer.norm2(x + layer.mlp(x)), "attention": attn}
    h = layer.norm1(x)
    h2, attn = attn_fn(
        h, h, h, attn_mask=None if kind == "no_mask" else mask, return_attention=True
    )
    if kind == "no_residual":
        y = h2
        return {"out": layer.mlp(layer.norm2(y)), "attention": attn}
    if kind == "residual_of_norm":
        y = h + h2
        return {"out": layer.norm2(y) + layer.mlp(layer.norm2(y)), "attention": attn}
    y = x + h2
    norm2 = layer.norm1 if kind == "norm1_twice" else layer.norm2
    return {"out": y + layer.mlp(norm2(y)), "attention": attn}


def _layer_config(hidden, i):
    return (
        [(2, 6, 16, 2, 2.0), (3, 5, 24, 3, 1.5)][i]
        if hidden
        else [(2, 5, 16, 2, 2.0), (2, 7, 32, 4, 1.0)][i]
    )


def make_encoder_layer(seed, hidden):
    cases, mistakes = [], []
    for i in range(2):
        B, T, E, H, ratio = _layer_config(hidden, i)
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        layer = tu.TransformerEncoderLayer(E, H, ratio).eval()
        state = _random_state(layer, gen, scale=1.5)
        x = _randn(gen, B, T, E)
        mask = _random_mask(gen, T, T) if i == 1 else None
        with torch.no_grad():
            out, attn = layer(x, attn_mask=mask, return_attention=True)
            wrong = {
                "post-LN: normalise the input of each sub-layer (pre-LN), not the sum after the residual": _encoder_variant(
                    layer, x, mask, "post_ln"
                ),
                "the residual connections are missing: add the sub-layer output to its input": _encoder_variant(
                    layer, x, mask, "no_residual"
                ),
                "the residual adds LN(x): add the sub-layer output to the un-normalised x": _encoder_variant(
                    layer, x, mask, "residual_of_norm"
                ),
                "norm1 used before the MLP too: each sub-layer has its own LayerNorm (norm2 before the MLP)": _encoder_variant(
                    layer, x, mask, "norm1_twice"
                ),
            }
            if mask is not None:
                wrong["the attention mask is not passed to self.attn"] = _encoder_variant(
                    layer, x, mask, "no_mask"
                )
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "mlp_ratio": ratio,
            "state_dict": state,
            "x": x,
            "attn_mask": mask,
        }
        cases.append({"input": case_input, "target": {"out": out, "attention": attn}})
        mistakes.append(wrong)
    return cases, mistakes


def _decoder_variant(layer, x, memory, self_mask, memory_mask, kind):
    h = layer.norm1(x)
    if kind == "post_ln":
        x = layer.norm1(x + layer.self_attn(x, x, x, attn_mask=self_mask))
        x = layer.norm2(x + layer.cross_attn(x, memory, memory, attn_mask=memory_mask))
        return layer.norm3(x + layer.mlp(x))
    sa = layer.self_attn(h, h, h, attn_mask=None if kind == "no_causal" else self_mask)
    x = sa if kind == "no_residual" else x + sa
    h = layer.norm2(x)
    if kind == "memory_normalised":
        m = layer.norm2(memory)
        ca = layer.cross_attn(h, m, m, attn_mask=memory_mask)
    elif kind == "swapped_roles":
        ca = layer.cross_attn(h, h, h, attn_mask=None)
    else:
        ca = layer.cross_attn(h, memory, memory, attn_mask=memory_mask)
    x = ca if kind == "no_residual" else x + ca
    y = layer.mlp(layer.norm3(x))
    return y if kind == "no_residual" else x + y


def make_decoder_layer(seed, hidden):
    cases, mistakes = [], []
    for i in range(2):
        B, T, E, H, ratio = _layer_config(hidden, i)
        S = T + 2
        gen = _gen(seed + 10 + i)
        torch.manual_seed(seed + 10 + i)
        layer = tu.TransformerDecoderLayer(E, H, ratio).eval()
        state = _random_state(layer, gen, scale=1.5)
        x = _randn(gen, B, T, E)
        memory = _randn(gen, B, S, E, scale=2.0) + 0.5
        self_mask = tu.causal_mask(T)
        memory_mask = _random_mask(gen, B, T, S) if i == 1 else None
        args = (layer, x, memory, self_mask, memory_mask)
        with torch.no_grad():
            target = layer(x, memory, self_mask, memory_mask)
            wrong = {
                "the causal mask is not used in self-attention: pass self_attn_mask to self.self_attn": _decoder_variant(
                    *args, "no_causal"
                ),
                "post-LN: normalise the input of each sub-layer (pre-LN), not the sum after the residual": _decoder_variant(
                    *args, "post_ln"
                ),
                "the residual connections are missing": _decoder_variant(*args, "no_residual"),
                "memory normalised with norm2: only the queries (from x) are normalised before cross-attention": _decoder_variant(
                    *args, "memory_normalised"
                ),
                "cross-attention reads x instead of memory: keys and values come from memory": _decoder_variant(
                    *args, "swapped_roles"
                ),
            }
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "mlp_ratio": ratio,
            "state_dict": state,
            "x": x,
            "memory": memory,
            "self_attn_mask": self_mask,
            "memory_mask": memory_mask,
        }
        cases.append({"input": case_input, "target": target})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.8 DifferentialAttention
# ---------------------------------------------------------------------------


def _diff_variant(m, x, mask, kind, layer_idx):
    B, T, E = x.shape
    H, D = m.num_heads, m.head_dim
    lambda_init = m.lambda_init
    if kind == "off_by_one":
        lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
    q = m.q_proj(x).view(B, T, 2 * H, D).transpose(1, 2)
    k = m.k_proj(x).view(B, T, 2 * H, D).transpose(1, 2)
    v = m.v_proj(x).view(B, T, H, 2 * D).transpose(1, 2)
    scale = math.sqrt(2 * D) if kind == "scale_2d" else math.sqrt(D)
    scores = q @ k.transpose(-2, -1) / scale
    if mask is not None:
        scores = scores.masked_fill(~(mask[:, None] if mask.dim() == 3 else mask), float("-inf"))
    maps = scores.softmax(-1).view(B, H, 2, T, T)
    lam = torch.exp(m.lambda_q1 @ m.lambda_k1) - torch.exp(m.lambda_q2 @ m.lambda_k2)
    if kind != "no_lambda_init":
        lam = lam + lambda_init
    attn = (
        maps[:, :, 0] + lam * maps[:, :, 1]
        if kind == "added"
        else maps[:, :, 0] - lam * maps[:, :, 1]
    )
    y = attn @ v  # (B, H, T, 2D)
    if kind == "norm_whole":
        y = y.transpose(1, 2).reshape(B, T, E)
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + m.eps) * m.norm_weight.repeat(H)
        y = y.reshape(B, T, H, 2 * D).transpose(1, 2)
    elif kind != "no_norm":
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + m.eps) * m.norm_weight
    if kind != "no_scale":
        y = y * (1 - lambda_init)
    out = m.out_proj(y.transpose(1, 2).reshape(B, T, E))
    return {"out": out, "attention": attn}


def make_differential_attention(seed, hidden):
    configs = (
        [(2, 6, 32, 2, 2, False), (2, 5, 48, 3, 5, True)]
        if hidden
        else [(2, 5, 32, 2, 1, False), (2, 6, 32, 4, 3, True)]
    )
    cases, mistakes = [], []
    for i, (B, T, E, H, layer_idx, masked) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        m = tu.DifferentialAttention(E, H, layer_idx).eval()
        state = _random_state(m, gen, scale=2.0)
        x = _randn(gen, B, T, E)
        mask = tu.causal_mask(T) if masked else None
        with torch.no_grad():
            out, attn = m(x, attn_mask=mask, return_attention=True)
            wrong = {
                "the (1 - lambda_init) output scale is missing": _diff_variant(
                    m, x, mask, "no_scale", layer_idx
                ),
                "lambda_init is not added to lambda: lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init": _diff_variant(
                    m, x, mask, "no_lambda_init", layer_idx
                ),
                "the per-head RMSNorm is missing": _diff_variant(m, x, mask, "no_norm", layer_idx),
                "RMSNorm over the whole embedding: normalise each head's output (2D channels) separately": _diff_variant(
                    m, x, mask, "norm_whole", layer_idx
                ),
                "the two maps are added: subtract lambda times the second map": _diff_variant(
                    m, x, mask, "added", layer_idx
                ),
                "layer index off by one in lambda_init: use exp(-0.3 * (layer_idx - 1))": _diff_variant(
                    m, x, mask, "off_by_one", layer_idx
                ),
                "scores scaled by sqrt(2D): each half has size D = head_dim, scale by sqrt(D)": _diff_variant(
                    m, x, mask, "scale_2d", layer_idx
                ),
            }
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "layer_idx": layer_idx,
            "state_dict": state,
            "x": x,
            "attn_mask": mask,
        }
        cases.append({"input": case_input, "target": {"out": out, "attention": attn}})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.9 Convolution
# ---------------------------------------------------------------------------


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
        target = test_functions.run_conv2d(tu, inp)
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


# ---------------------------------------------------------------------------
# 1.10 Attention rollout
# ---------------------------------------------------------------------------


def _rollout_variant(attentions, kind):
    rollout = None
    for attn in attentions:
        a = attn.amax(dim=1) if kind == "max_heads" else attn.mean(dim=1)
        if kind != "no_identity":
            a = a + torch.eye(a.shape[-1])
        if kind != "no_renorm":
            a = a / a.sum(-1, keepdim=True)
        if rollout is None:
            rollout = a
        else:
            rollout = rollout @ a if kind == "wrong_order" else a @ rollout
    cls_map = rollout[:, 1:, 0] if kind == "column" else rollout[:, 0, 1:]
    return {"rollout": rollout, "cls_map": cls_map}


def make_attention_rollout(seed, hidden):
    configs = [(3, 2, 3, 10), (2, 1, 4, 5)] if hidden else [(3, 2, 2, 9), (4, 2, 3, 17)]
    cases, mistakes = [], []
    for i, (L, B, H, T) in enumerate(configs):
        gen = _gen(seed + i)
        attentions = (_randn(gen, L, B, H, T, T, scale=2.0)).softmax(-1)  # (L, B, H, T, T)
        target = test_functions.run_attention_rollout(tu, {"attentions": attentions})
        wrong = {
            "the identity (residual connection) is not added to each layer's attention": _rollout_variant(
                attentions, "no_identity"
            ),
            "rows are not renormalised after adding the identity": _rollout_variant(
                attentions, "no_renorm"
            ),
            "layers multiplied in the wrong order: R = A_L @ ... @ A_1 (later layers on the left)": _rollout_variant(
                attentions, "wrong_order"
            ),
            "heads combined with max: average the heads": _rollout_variant(attentions, "max_heads"),
            "the CLS map is read from the CLS column: use the CLS row rollout[:, 0, 1:]": _rollout_variant(
                attentions, "column"
            ),
        }
        cases.append({"input": {"attentions": attentions}, "target": target})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.11 VisionTransformer
# ---------------------------------------------------------------------------


def _vit_variant(vit, x, kind):
    tokens = vit.patch_embed(x)
    if vit.pos_embed is not None and kind != "no_pos":
        tokens = vit.pos_embed(tokens)
    cls = vit.cls_token.expand(tokens.shape[0], -1, -1)
    tokens = torch.cat([tokens, cls], 1) if kind == "cls_last" else torch.cat([cls, tokens], 1)
    attentions = []
    for block in vit.blocks:
        tokens, attn = block(tokens, return_attention=True)
        attentions.append(attn)
    if kind != "no_norm":
        tokens = vit.norm(tokens)
    feature = {"cls_last": tokens[:, -1], "mean_pool": tokens.mean(1)}.get(kind, tokens[:, 0])
    return {"logits": vit.head(feature), "attention": torch.stack(attentions)}


def make_vision_transformer(seed, hidden):
    kinds = (
        ["learned2d", "sinusoidal", "none"]
        if hidden
        else ["learned1d", "learned2d", "sinusoidal", "none"]
    )
    cases, mistakes = [], []
    for i, pos in enumerate(kinds):
        config = {
            "img_size": 32,
            "patch_size": 8,
            "in_channels": 3,
            "num_classes": 5 if hidden else 10,
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "dropout": 0.0,
            "pos_embedding": pos,
        }
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        vit = tu.VisionTransformer(**config).eval()
        state = _random_state(vit, gen, scale=1.5)
        x = _randn(gen, 2, 3, 32, 32)
        with torch.no_grad():
            logits, attentions = vit(x, return_attention=True)
            n = vit.patch_embed.num_patches
            pos_table = (
                vit.pos_embed(torch.zeros(1, n, 16))[0] if vit.pos_embed is not None else None
            )
            wrong = {
                "the CLS token is appended at the end: prepend it (token 0)": _vit_variant(
                    vit, x, "cls_last"
                ),
                "the final LayerNorm self.norm is skipped": _vit_variant(vit, x, "no_norm"),
                "the head reads the mean of all tokens: classify from the CLS token (token 0)": _vit_variant(
                    vit, x, "mean_pool"
                ),
            }
            if pos != "none":
                wrong["the positional encoding self.pos_embed is not added"] = _vit_variant(
                    vit, x, "no_pos"
                )
        case_input = {"config": config, "state_dict": state, "x": x, "pos_table": pos_table}
        cases.append(
            {
                "input": case_input,
                "target": {"logits": logits, "attention": torch.stack(attentions)},
            }
        )
        mistakes.append(wrong)
    return cases, mistakes


MAKERS = {
    "self_attention": make_self_attention,
    "layer_norm": make_layer_norm,
    "multi_head_attention": make_multi_head_attention,
    "positional_encoding": make_positional_encoding,
    "patch_embedding": make_patch_embedding,
    "encoder_layer": make_encoder_layer,
    "decoder_layer": make_decoder_layer,
    "differential_attention": make_differential_attention,
    "conv2d": make_conv2d,
    "attention_rollout": make_attention_rollout,
    "vision_transformer": make_vision_transformer,
}


# ---------------------------------------------------------------------------
# Checks and writing
# ---------------------------------------------------------------------------


def _check(exercise_id, cases, mistakes):
    """The student runners must reproduce the targets; mistakes must be distinguishable."""
    info = test_functions.EXERCISES[exercise_id]
    rtol, atol = info["rtol"], info["atol"]
    kept, diagnosed = [], set()
    for i, (case, wrong) in enumerate(zip(cases, mistakes)):
        torch.manual_seed(0)
        with test_functions.forbidden_ops(exercise_id):
            got = test_functions.RUNNERS[exercise_id](tu, case["input"])
        problem = test_functions.explain_difference(got, case["target"], rtol, atol)
        if problem:
            raise RuntimeError(
                f"{exercise_id} case {i}: the runner disagrees with the reference: {problem}"
            )
        # Keep each mistake only in the first case where it fails the tolerance: a student
        # with that mistake fails there first (and the files stay small).
        visible = {
            d: out
            for d, out in wrong.items()
            if d not in diagnosed and not test_functions._matches(out, case["target"], rtol, atol)
        }
        diagnosed.update(visible)
        kept.append(visible)
    missing = set().union(*mistakes) - diagnosed
    if missing:
        raise RuntimeError(f"{exercise_id}: these mistakes are never visible: {sorted(missing)}")
    return kept


class _RawBytes:
    """Pickles as numpy.frombuffer(data, dtype)."""

    def __init__(self, data, dtype):
        self.data, self.dtype = data, dtype

    def __reduce__(self):
        return (numpy.frombuffer, (self.data, self.dtype))


class _FlatTensor:
    """Pickles as torch.tensor(numpy.frombuffer(...)): a copy, so it is writable."""

    def __init__(self, tensor):
        self.array = tensor.detach().cpu().contiguous().reshape(-1).numpy()

    def __reduce__(self):
        return (torch.tensor, (_RawBytes(self.array.tobytes(), str(self.array.dtype)),))


class _ReproduciblePickler(pickle.Pickler):
    """Pickles tensors by value only.

    torch's own tensor pickling embeds a memory address as the storage key, so the
    same tensor gives different bytes on every run. Here a tensor becomes
    ``torch.tensor(numpy.frombuffer(raw_bytes, dtype)).reshape(shape)``: plain
    ``pickle.load`` still returns an ordinary torch tensor.
    """

    def reducer_override(self, obj):
        if type(obj) is torch.Tensor:
            return (torch.Tensor.reshape, (_FlatTensor(obj), tuple(obj.shape)))
        return NotImplemented


def _dumps(obj):
    buffer = io.BytesIO()
    _ReproduciblePickler(buffer, protocol=PICKLE_PROTOCOL).dump(obj)
    return buffer.getvalue()


def generate(out_dir=None, split="public", exercises=None):
    """Write ``<id>.pkl`` and ``<id>_mistakes.pkl`` of every exercise into out_dir.

    split: "public" (test_data, shipped) or "hidden" (autograder only; other seeds and
    shapes). Returns the list of written paths.
    """
    if split not in SEEDS:
        raise ValueError(f"split={split!r} is unknown; use 'public' or 'hidden'")
    out_dir = OUT_DIRS[split] if out_dir is None else out_dir
    os.makedirs(out_dir, exist_ok=True)
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    # One thread: the same float results whatever the machine's core count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _generate(out_dir, split, exercises)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _generate(out_dir, split, exercises):
    written = []
    for offset, (exercise_id, make) in enumerate(MAKERS.items()):
        if exercises is not None and exercise_id not in exercises:
            continue
        cases, mistakes = make(SEEDS[split] + 100 * offset, split == "hidden")
        cases, mistakes = _clean(cases), _clean(mistakes)
        mistakes = _check(exercise_id, cases, mistakes)
        for name, obj in ((f"{exercise_id}.pkl", cases), (f"{exercise_id}_mistakes.pkl", mistakes)):
            path = os.path.join(out_dir, name)
            with open(path, "wb") as f:
                f.write(_dumps(obj))
            written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["public", "hidden", "both"], default="both")
    parser.add_argument(
        "--out_dir", default=None, help="default: test_data/ or autograder/reference_data/"
    )
    args = parser.parse_args(argv)
    splits = ["public", "hidden"] if args.split == "both" else [args.split]
    if args.out_dir is not None and len(splits) > 1:
        parser.error("--out_dir needs --split public or --split hidden")
    for split in splits:
        for path in generate(args.out_dir, split):
            print(f"{os.path.getsize(path):>8} bytes  {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
