"""Runners: build the student's module(s) from one stored case and return the output(s).

``RUNNERS[exercise_id](tu, case_input)``, with ``tu`` the student's transformer_utils module;
test_functions.py and the autograder's sandbox call the same runners. Weights are loaded
strictly (the parameter names are part of the exercise).
"""

import torch
import torch.nn as nn

from kit.exercise_checks.stand_ins import (
    AddTable,
    TorchDecoderLayer,
    TorchEncoderLayer,
    TorchLayerNorm,
    TorchMultiHeadAttention,
    TorchPatchEmbedding,
    TorchSinusoidalEncoding1D,
)


def _load(module, state_dict):
    module.load_state_dict(state_dict)  # strict: parameter names must match
    return module.eval()


def run_self_attention(tu, case):
    sd = case["weight"]
    input_dim = sd["W_query.weight"].shape[1]
    dims = [sd[f"W_{n}.weight"].shape[0] for n in ("query", "key", "value")]
    model = _load(tu.SelfAttention(input_dim, *dims), sd)
    with torch.no_grad():
        return model(case["x"].clone())


def run_layer_norm(tu, case):
    norm = tu.LayerNorm(case["x"].shape[-1])
    norm.w = nn.Parameter(case["w"].clone())
    norm.b = nn.Parameter(case["b"].clone())
    with torch.no_grad():
        return norm(case["x"].clone())


def run_multi_head_attention(tu, case):
    mha = _load(tu.MultiHeadAttention(case["embed_dim"], case["num_heads"]), case["state_dict"])
    with torch.no_grad():
        out, attn = mha(
            case["query"], case["key"], case["value"], case["attn_mask"], return_attention=True
        )
    return {"out": out, "attention": attn}


def run_positional_encoding(tu, case):
    N, C, h, w = case["num_positions"], case["dim"], case["height"], case["width"]
    learned1d = _load(tu.LearnedPositionalEncoding1D(h * w, C), case["learned1d"])
    learned2d = _load(tu.LearnedPositionalEncoding2D(h, w, C), case["learned2d"])
    x = case["x"]  # (B, h*w, C)
    with torch.no_grad():
        return {
            "sinusoidal_encoding_1d": tu.sinusoidal_encoding_1d(N, C),
            "sinusoidal_encoding_2d": tu.sinusoidal_encoding_2d(h, w, C),
            "SinusoidalPositionalEncoding1D": tu.SinusoidalPositionalEncoding1D()(x),
            "SinusoidalPositionalEncoding2D": tu.SinusoidalPositionalEncoding2D(h, w)(x),
            "LearnedPositionalEncoding1D": learned1d(x),
            "LearnedPositionalEncoding2D": learned2d(x),
        }


def run_patch_embedding(tu, case):
    x, p = case["x"], case["patch_size"]
    embed = tu.PatchEmbedding(x.shape[-1], p, x.shape[1], case["embed_dim"])
    embed = _load(embed, case["state_dict"])
    with torch.no_grad():
        return {
            "img_to_patch": tu.img_to_patch(x, p),
            "img_to_patch(flatten_channels=False)": tu.img_to_patch(x, p, flatten_channels=False),
            "PatchEmbedding": embed(x),
        }


def run_encoder_layer(tu, case):
    layer = tu.TransformerEncoderLayer(case["embed_dim"], case["num_heads"], case["mlp_ratio"])
    layer = _load(layer, case["state_dict"])
    layer.norm1, layer.norm2 = TorchLayerNorm(layer.norm1), TorchLayerNorm(layer.norm2)
    layer.attn = TorchMultiHeadAttention(layer.attn)
    with torch.no_grad():
        out, attn = layer(case["x"], attn_mask=case["attn_mask"], return_attention=True)
    return {"out": out, "attention": attn}


def run_decoder_layer(tu, case):
    layer = tu.TransformerDecoderLayer(case["embed_dim"], case["num_heads"], case["mlp_ratio"])
    layer = _load(layer, case["state_dict"])
    for name in ("norm1", "norm2", "norm3"):
        setattr(layer, name, TorchLayerNorm(getattr(layer, name)))
    layer.self_attn = TorchMultiHeadAttention(layer.self_attn)
    layer.cross_attn = TorchMultiHeadAttention(layer.cross_attn)
    with torch.no_grad():
        return layer(case["x"], case["memory"], case["self_attn_mask"], case["memory_mask"])


def run_differential_attention(tu, case):
    attn = tu.DifferentialAttention(case["embed_dim"], case["num_heads"], case["layer_idx"])
    attn = _load(attn, case["state_dict"])
    with torch.no_grad():
        out, maps = attn(case["x"], attn_mask=case["attn_mask"], return_attention=True)
    return {"out": out, "attention": maps}


def run_conv2d(tu, case):
    weight, bias = case["weight"], case["bias"]
    C_out, C, kh, kw = weight.shape
    conv = tu.CustomConv2d(
        C, C_out, (kh, kw), case["stride"], case["padding"], bias=bias is not None
    )
    _load(conv, {"weight": weight, "bias": bias} if bias is not None else {"weight": weight})
    x = case["x"].clone().requires_grad_(True)
    out = conv(x)
    out.backward(case["grad_out"])
    result = {"out": out.detach(), "grad_x": x.grad, "grad_weight": conv.weight.grad}
    if bias is not None:
        result["grad_bias"] = conv.bias.grad
    return result


def run_attention_rollout(tu, case):
    rollout, cls_map = tu.attention_rollout(list(case["attentions"]))  # L tensors (B, H, T, T)
    return {"rollout": rollout, "cls_map": cls_map}


def run_vision_transformer(tu, case):
    vit = _load(tu.VisionTransformer(**case["config"]), case["state_dict"])
    # torch's own layers replace the other exercises' modules (same weights).
    vit.patch_embed = TorchPatchEmbedding(vit.patch_embed)
    if vit.pos_embed is not None:
        vit.pos_embed = AddTable(case["pos_table"])
    vit.blocks = nn.ModuleList(TorchEncoderLayer(block) for block in vit.blocks)
    vit.norm = TorchLayerNorm(vit.norm)
    with torch.no_grad():
        logits, attentions = vit(case["x"], return_attention=True)
    return {"logits": logits, "attention": torch.stack(list(attentions))}  # (L, B, H, T, T)


def run_window_attention(tu, case):
    x, w = case["x"], case["window_size"]  # x (B, H, W, C)
    H, W = x.shape[1:3]
    pad_hw = (-(-H // w) * w, -(-W // w) * w)  # each part is run on its own inputs
    attn = tu.WindowSelfAttention(case["embed_dim"], case["num_heads"], w)
    attn = _load(attn, case["state_dict"])
    with torch.no_grad():
        return {
            "window_partition": tu.window_partition(x, w)[0],
            "window_unpartition": tu.window_unpartition(case["windows"], w, pad_hw, (H, W)),
            "WindowSelfAttention": attn(x),
        }


def run_captioning(tu, case):
    model = tu.CaptioningTransformer(case["word_to_idx"], **case["config"])
    model = _load(model, case["state_dict"])
    # torch's own layers replace the other exercises' modules (same weights), so only this
    # exercise's wiring is tested: embedding, positions, memory, mask, norm, output, sampling.
    model.positional_encoding = TorchSinusoidalEncoding1D()
    model.layers = nn.ModuleList(TorchDecoderLayer(layer) for layer in model.layers)
    model.norm = TorchLayerNorm(model.norm)
    with torch.no_grad():
        scores = model(case["features"], case["captions"])  # (N, T, V)
        sample = model.sample(case["features"], case["max_length"])  # (N, L) int64
    return {"scores": scores, "sample": sample}


RUNNERS = {
    "self_attention": run_self_attention,
    "layer_norm": run_layer_norm,
    "multi_head_attention": run_multi_head_attention,
    "positional_encoding": run_positional_encoding,
    "patch_embedding": run_patch_embedding,
    "encoder_layer": run_encoder_layer,
    "decoder_layer": run_decoder_layer,
    "differential_attention": run_differential_attention,
    "conv2d": run_conv2d,
    "attention_rollout": run_attention_rollout,
    "vision_transformer": run_vision_transformer,
    "window_attention": run_window_attention,
    "captioning": run_captioning,
}
