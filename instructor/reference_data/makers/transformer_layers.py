"""Cases and known mistakes of 1.6 TransformerEncoderLayer and 1.7
TransformerDecoderLayer."""

import torch

import transformer_utils as tu  # the reference solution

from .random_inputs import _gen, _randn, _random_mask, _random_state


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
