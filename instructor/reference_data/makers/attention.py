"""Cases and known mistakes of the attention exercises: 1.1 SelfAttention,
1.3 MultiHeadAttention and 1.8 DifferentialAttention."""

import functools
import math

import torch

import transformer_utils as tu  # the reference solution

from ..tolerances import _exact_target
from .random_inputs import _gen, _randn, _random_mask, _random_state

# ---------------------------------------------------------------------------
# 1.1 SelfAttention
# ---------------------------------------------------------------------------


def _self_attention_variant(
    x,
    sd,
    scale="sqrt",
    softmax_dim=2,
    kq=False,
    softmax=True,
    bias=True,
    scale_after=False,
    whole_batch=False,
    key_weights="W_key",
    transpose_weights=False,
):
    def project(name, inp):
        out = inp @ sd[f"{name}.weight"].t()
        return out + sd[f"{name}.bias"] if bias else out

    B, T, _ = x.shape
    inp = x.reshape(1, B * T, -1) if whole_batch else x
    q, k, v = project("W_query", inp), project(key_weights, inp), project("W_value", inp)
    scores = k @ q.transpose(1, 2) if kq else q @ k.transpose(1, 2)
    dq, dv, din = q.shape[-1], v.shape[-1], x.shape[-1]
    divisor = {
        "sqrt": math.sqrt(dq),
        "none": 1.0,
        "dim": dq,
        "value": math.sqrt(dv),
        "input": math.sqrt(din),
        "multiply": 1 / math.sqrt(dq),
    }[scale]
    if not scale_after:
        scores = scores / divisor
    weights = scores.softmax(dim=softmax_dim) if softmax else scores
    if scale_after:
        weights = weights / divisor
    if transpose_weights:
        weights = weights.transpose(1, 2)
    return (weights @ v).reshape(B, T, -1)


def self_attention_mistakes(x, state):
    """Outputs of the typical wrong SelfAttention implementations on one case."""
    v = functools.partial(_self_attention_variant, x, state)
    return {
        "the scores are not scaled: divide Q K^T by sqrt(query_dim)": v(scale="none"),
        "the scores are divided by query_dim instead of sqrt(query_dim)": v(scale="dim"),
        "the scores are scaled by sqrt(value_dim) instead of sqrt(query_dim)": v(scale="value"),
        "the scores are scaled by sqrt(input_dim) instead of sqrt(query_dim)": v(scale="input"),
        "the scores are multiplied by sqrt(query_dim): divide by it": v(scale="multiply"),
        "the scale is applied after the softmax: divide the scores by sqrt(query_dim) "
        "before the softmax": v(scale_after=True),
        "softmax over the wrong dimension: normalise over the keys (dim 2), not the queries "
        "(dim 1)": v(softmax_dim=1),
        "softmax over the batch (dim 0): normalise each query's scores over the keys (dim 2)": v(
            softmax_dim=0
        ),
        "K Q^T computed instead of Q K^T (the attention matrix is transposed)": v(kq=True),
        "the attention weights are transposed before multiplying by V: use weights @ V": v(
            transpose_weights=True
        ),
        "the softmax is missing": v(softmax=False),
        "the biases of the projections are left out: use self.W_query(x) (weight and bias), "
        "not x @ W^T alone": v(bias=False),
        "the keys are projected with W_query: K = self.W_key(x)": v(key_weights="W_query"),
        "tokens attend across the whole batch (B*T tokens at once): each image's tokens attend "
        "only to the same image, so keep the batch dim in the products (torch.bmm or @ on "
        "(B, T, D))": v(whole_batch=True),
    }


def make_self_attention(seed, hidden):
    B, T, Din, Dq, Dv = (4, 7, 24, 32, 40) if hidden else (8, 10, 16, 64, 96)
    cases, mistakes = [], []
    for i in range(5):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        model = tu.SelfAttention(Din, Dq, Dq, Dv)
        state = _random_state(model, gen, scale=2.0)
        x = _randn(gen, B, T, Din)
        case_input = {"x": x, "weight": state}
        cases.append({"input": case_input, "target": _exact_target("self_attention", case_input)})
        mistakes.append(self_attention_mistakes(x, state))
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
