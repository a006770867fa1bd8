"""More known mistakes of the practice exercises, added to what each maker stores.

Every practice exercise names at least five slips students actually make (order of
operations, the axis of a softmax or a normalisation, where a mask goes, off-by-one
positions and exponents, how heads and patches are split and merged, residual and norm
wiring, the transposes of a backward pass). They are computed here from each stored case
with the reference solution, after the case maker ran, so that the makers (and the seeds of
their cases) stay as they were; ``generate`` stores them with the others and checks them the
same way (far from the target, distinct, named by the student tests' own diagnosis).

``EXTRA[exercise_id](case_input)`` returns ``{"description": output}`` for one case.
"""

import math

import torch
import torch.nn.functional as F

import transformer_utils as tu  # the reference solution

from .embeddings import _positional_outputs

# ---------------------------------------------------------------------------
# 1.3 MultiHeadAttention
# ---------------------------------------------------------------------------


def _mha(case):
    m = tu.MultiHeadAttention(case["embed_dim"], case["num_heads"]).eval()
    m.load_state_dict(case["state_dict"])
    return m


def _mha_wrong(case, kind):
    m, mask = _mha(case), case["attn_mask"]
    query, key, value = case["query"], case["key"], case["value"]
    B, T, E = query.shape
    S, H, D = key.shape[1], m.num_heads, m.head_dim
    q = m.q_proj(query).view(B, T, H, D).transpose(1, 2)
    k = m.k_proj(key).view(B, S, H, D).transpose(1, 2)
    v = m.v_proj(value).view(B, S, H, D).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    mask = None if mask is None else (mask[:, None] if mask.dim() == 3 else mask)
    if mask is not None and kind != "mask_after_softmax":
        scores = scores.masked_fill(~mask, float("-inf"))
    attn = scores.softmax(dim=-1)
    if kind == "mask_after_softmax":
        attn = attn.masked_fill(~mask, 0.0)
    out = attn @ v  # (B, H, T, D)
    out = (
        out.reshape(B, T, E)
        if kind == "merge_no_transpose"
        else out.transpose(1, 2).reshape(B, T, E)
    )
    return {"out": m.out_proj(out), "attention": attn}


def multi_head_attention(case):
    wrong = {
        "heads merged without moving the head dim back: transpose (B, H, T, D) to "
        "(B, T, H, D) before reshaping to (B, T, E)": _mha_wrong(case, "merge_no_transpose"),
    }
    if case["attn_mask"] is not None:
        wrong[
            "the mask is applied after the softmax (blocked weights zeroed, rows no longer sum "
            "to 1): fill the blocked scores with -inf before the softmax"
        ] = _mha_wrong(case, "mask_after_softmax")
    return wrong


# ---------------------------------------------------------------------------
# 1.4 Positional encodings
# ---------------------------------------------------------------------------


def _sin1d(kind):
    def encode(N, C):
        start = 1 if kind == "from_one" else 0
        pos = torch.arange(start, N + start, dtype=torch.float32)[:, None]
        steps = torch.arange(
            0, C // 2 if kind == "exponent_i" else C, 1 if kind == "exponent_i" else 2
        )
        inv = torch.exp(-math.log(10000.0) * steps.float() / C)[None]
        pe = torch.zeros(N, C)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * inv), torch.cos(pos * inv)
        return pe

    return encode


def positional_encoding(case):
    return {
        "the exponent uses i instead of 2i: column pair i has the frequency "
        "1 / 10000^(2i / dim), so use torch.arange(0, dim, 2) / dim": _positional_outputs(
            case, _sin1d("exponent_i")
        ),
        "positions counted from 1: row p encodes position p, starting at 0 "
        "(torch.arange(num_positions))": _positional_outputs(case, _sin1d("from_one")),
    }


# ---------------------------------------------------------------------------
# 1.5 Patch embedding
# ---------------------------------------------------------------------------


def _patches(x, p, kind):
    B, C, H, W = x.shape
    h, w = H // p, W // p
    if kind == "rows_cols_swapped":  # (B, h, w, C, col in patch, row in patch)
        return x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 5, 3).reshape(B, h * w, C, p, p)
    # kind == "size_and_count_swapped": each side split as (p, H/p) instead of (H/p, p)
    return x.reshape(B, C, p, h, p, w).permute(0, 3, 5, 1, 2, 4).reshape(B, h * w, C, p, p)


def patch_embedding(case):
    x, p = case["x"], case["patch_size"]
    embed = tu.PatchEmbedding(x.shape[-1], p, x.shape[1], case["embed_dim"])
    embed.load_state_dict(case["state_dict"])
    wrong = {}
    for kind, description in (
        ("rows_cols_swapped", "rows and columns swapped inside each patch: flatten a patch in "
         "(channel, row in patch, column in patch) order"),
        ("size_and_count_swapped", "each side split as (p, H/p) instead of (H/p, p): the "
         "patches take every (H/p)-th pixel; view as (B, C, H/p, p, W/p, p)"),
    ):  # fmt: skip
        patches = _patches(x, p, kind)
        wrong[description] = {
            "img_to_patch": patches.flatten(2),
            "img_to_patch(flatten_channels=False)": patches,
            "PatchEmbedding": embed.proj(patches.flatten(2)),
        }
    return wrong


# ---------------------------------------------------------------------------
# 1.6 / 1.7 Encoder and decoder layers
# ---------------------------------------------------------------------------


def _layer(cls, case):
    layer = cls(case["embed_dim"], case["num_heads"], case["mlp_ratio"]).eval()
    layer.load_state_dict(case["state_dict"])
    return layer


def encoder_layer(case):
    layer, x, mask = _layer(tu.TransformerEncoderLayer, case), case["x"], case["attn_mask"]
    h = layer.norm1(x)
    a, attn = layer.attn(h, h, h, attn_mask=mask, return_attention=True)
    y = x + a
    return {
        "the MLP reads the attention output instead of the sum after the first residual: "
        "x = x + attn(...), then x = x + mlp(norm2(x))": {
            "out": y + layer.mlp(layer.norm2(a)),
            "attention": attn,
        },
        "the MLP branch has no residual: add its output to its input, x = x + mlp(norm2(x))": {
            "out": layer.mlp(layer.norm2(y)),
            "attention": attn,
        },
    }


def decoder_layer(case):
    layer = _layer(tu.TransformerDecoderLayer, case)
    x, memory = case["x"], case["memory"]
    self_mask, memory_mask = case["self_attn_mask"], case["memory_mask"]

    def run(cross_norm, cross_mask):
        h = layer.norm1(x)
        y = x + layer.self_attn(h, h, h, attn_mask=self_mask)
        h = cross_norm(y)
        y = y + layer.cross_attn(h, memory, memory, attn_mask=cross_mask)
        return y + layer.mlp(layer.norm3(y))

    wrong = {
        "norm1 reused before the cross-attention: each sub-layer has its own LayerNorm "
        "(norm2 before the cross-attention)": run(layer.norm1, memory_mask),
    }
    if memory_mask is not None:
        wrong["the memory mask is not passed to the cross-attention (attn_mask=memory_mask)"] = run(
            layer.norm2, None
        )
    return wrong


# ---------------------------------------------------------------------------
# 1.9 Conv2d: the transposes of the backward pass
# ---------------------------------------------------------------------------


def conv2d(case):
    x, weight, bias = case["x"], case["weight"], case["bias"]
    stride, padding, grad_out = case["stride"], case["padding"], case["grad_out"]
    C_out, C, kh, kw = weight.shape
    B = x.shape[0]
    out = F.conv2d(x, weight, bias, stride, padding)  # never shipped: torch's conv is fine here
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (B, C*kh*kw, L)
    g = grad_out.reshape(B, C_out, -1)
    right_w = (g @ cols.transpose(1, 2)).sum(0).reshape(C_out, C, kh, kw)
    right_x = F.fold(weight.reshape(C_out, -1).t() @ g, x.shape[2:], (kh, kw),
                     padding=padding, stride=stride)  # fmt: skip

    def result(grad_x, grad_weight):
        r = {"out": out, "grad_x": grad_x, "grad_weight": grad_weight}
        if bias is not None:
            r["grad_bias"] = g.sum(dim=(0, 2))
        return r

    reshaped = weight.reshape(-1, C_out) @ g  # a reshape where a transpose belongs
    return {
        "grad_weight reshaped from a (C*kh*kw, C_out) product: compute grad @ cols^T, shape "
        "(C_out, C*kh*kw), summed over the batch, then reshape": result(
            right_x, (cols @ g.transpose(1, 2)).sum(0).reshape(C_out, C, kh, kw)
        ),
        "the weight matrix is reshaped to (C*kh*kw, C_out) instead of transposed: "
        "dcols = weight.reshape(C_out, -1).t() @ grad": result(
            F.fold(reshaped, x.shape[2:], (kh, kw), padding=padding, stride=stride), right_w
        ),
    }


# ---------------------------------------------------------------------------
# 1.10 Attention rollout and 1.11 VisionTransformer
# ---------------------------------------------------------------------------


def _rollout(attentions, kind):
    rollout = None
    for attn in attentions:
        a = attn.sum(dim=1) if kind == "sum_heads" else attn.mean(dim=1)
        a = a + torch.eye(a.shape[-1])
        a = a / a.sum(dim=-2 if kind == "columns" else -1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return {"rollout": rollout, "cls_map": rollout[:, 0, 1:]}


def attention_rollout(case):
    attentions = case["attentions"]
    return {
        "the identity weighs too little against the heads (the heads summed, not averaged, "
        "or a scaled identity): average the heads with mean(dim=1), then add the identity "
        "itself": _rollout(attentions, "sum_heads"),
        "renormalised over the columns (dim -2): each row must sum to 1, so divide by "
        "a.sum(dim=-1, keepdim=True)": _rollout(attentions, "columns"),
    }


def vision_transformer(case):
    if case["config"].get("pool", "cls") != "cls":
        return {}
    vit = tu.VisionTransformer(**case["config"]).eval()
    vit.load_state_dict(case["state_dict"])
    tokens = vit.patch_embed(case["x"])
    if vit.pos_embed is not None:
        tokens = vit.pos_embed(tokens)
    tokens = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    attentions = []
    for block in vit.blocks:
        tokens, attn = block(tokens, return_attention=True)
        attentions.append(attn)
    tokens = vit.norm(tokens)
    return {
        "the head reads token 1 (the first patch): the CLS token is token 0, tokens[:, 0]": {
            "logits": vit.head(tokens[:, 1]),
            "attention": torch.stack(attentions),
        }
    }


EXTRA = {
    "multi_head_attention": multi_head_attention,
    "positional_encoding": positional_encoding,
    "patch_embedding": patch_embedding,
    "encoder_layer": encoder_layer,
    "decoder_layer": decoder_layer,
    "conv2d": conv2d,
    "attention_rollout": attention_rollout,
    "vision_transformer": vision_transformer,
}


def add_practice_mistakes(exercise_id, cases, mistakes):
    """``mistakes`` with this module's mistakes of the exercise added to every case."""
    extra = EXTRA.get(exercise_id)
    if extra is None:
        return mistakes
    with torch.no_grad():
        return [{**wrong, **extra(case["input"])} for case, wrong in zip(cases, mistakes)]
