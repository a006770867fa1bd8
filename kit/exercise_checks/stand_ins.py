"""Stand-ins built from torch's own layers, with the weights of a student's module.

Exercises built from other exercises (encoder/decoder layer, ViT) are tested with these in
place of the student's LayerNorm, attention, etc., so that one unfinished exercise never
fails another exercise's test.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class TorchLayerNorm(nn.Module):
    """Same parameters as a LayerNorm exercise module, computed by F.layer_norm."""

    def __init__(self, norm):
        super().__init__()
        self.w, self.b, self.eps = norm.w, norm.b, norm.eps

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


class TorchMultiHeadAttention(nn.Module):
    """Same weights and call signature as MultiHeadAttention, computed by torch."""

    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, attn_mask=None, return_attention=False):
        m = self.mha
        if attn_mask is not None:
            attn_mask = ~attn_mask  # torch's convention: True = blocked
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.repeat_interleave(m.num_heads, dim=0)  # (B*H, T, S)
        out, attn = F.multi_head_attention_forward(
            query.transpose(0, 1),  # torch's function wants (T, B, E)
            key.transpose(0, 1),
            value.transpose(0, 1),
            m.embed_dim,
            m.num_heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([m.q_proj.bias, m.k_proj.bias, m.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=m.out_proj.weight,
            out_proj_bias=m.out_proj.bias,
            training=False,
            need_weights=True,
            attn_mask=attn_mask,
            use_separate_proj_weight=True,
            q_proj_weight=m.q_proj.weight,
            k_proj_weight=m.k_proj.weight,
            v_proj_weight=m.v_proj.weight,
            average_attn_weights=False,
        )
        out = out.transpose(0, 1)  # (B, T, E)
        return (out, attn) if return_attention else out


class TorchPatchEmbedding(nn.Module):
    """Same weights as PatchEmbedding; a stride-p convolution does the same job."""

    def __init__(self, patch_embed):
        super().__init__()
        self.p = patch_embed.patch_size
        self.proj = patch_embed.proj

    def forward(self, x):
        E, p = self.proj.out_features, self.p
        w = self.proj.weight.reshape(E, -1, p, p)  # (E, C, p, p)
        return F.conv2d(x, w, self.proj.bias, stride=p).flatten(2).transpose(1, 2)


class AddTable(nn.Module):
    """Adds a stored positional table (N, E) to the patch tokens."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return x + self.table


class TorchEncoderLayer(nn.Module):
    """Same weights as TransformerEncoderLayer, computed by nn.TransformerEncoderLayer."""

    def __init__(self, layer):
        super().__init__()
        E, H = layer.attn.embed_dim, layer.attn.num_heads
        fc1, fc2 = layer.mlp[0], layer.mlp[3]
        torch_layer = nn.TransformerEncoderLayer(
            E, H, fc1.out_features, dropout=0.0, activation="gelu",
            layer_norm_eps=layer.norm1.eps, batch_first=True, norm_first=True,
        )  # fmt: skip
        a = layer.attn
        weights = {
            "self_attn.in_proj_weight": torch.cat(
                [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
            ),
            "self_attn.in_proj_bias": torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
            "self_attn.out_proj.weight": a.out_proj.weight,
            "self_attn.out_proj.bias": a.out_proj.bias,
            "linear1.weight": fc1.weight,
            "linear1.bias": fc1.bias,
            "linear2.weight": fc2.weight,
            "linear2.bias": fc2.bias,
            "norm1.weight": layer.norm1.w,
            "norm1.bias": layer.norm1.b,
            "norm2.weight": layer.norm2.w,
            "norm2.bias": layer.norm2.b,
        }
        torch_layer.load_state_dict(weights)
        self.layer = torch_layer.eval()

    def forward(self, x, attn_mask=None, return_attention=False):
        blocked = None if attn_mask is None else ~attn_mask
        out = self.layer(x, src_mask=blocked)
        if not return_attention:
            return out
        h = self.layer.norm1(x)
        _, attn = self.layer.self_attn(
            h, h, h, attn_mask=blocked, need_weights=True, average_attn_weights=False
        )
        return out, attn


class TorchDecoderLayer(nn.Module):
    """Same weights and call as TransformerDecoderLayer, computed by
    nn.TransformerDecoderLayer (pre-LN: norm_first, GELU)."""

    def __init__(self, layer):
        super().__init__()
        E, H = layer.self_attn.embed_dim, layer.self_attn.num_heads
        fc1, fc2 = layer.mlp[0], layer.mlp[3]
        torch_layer = nn.TransformerDecoderLayer(
            E, H, fc1.out_features, dropout=0.0, activation="gelu",
            layer_norm_eps=layer.norm1.eps, batch_first=True, norm_first=True,
        )  # fmt: skip
        weights = {"linear1.weight": fc1.weight, "linear1.bias": fc1.bias,
                   "linear2.weight": fc2.weight, "linear2.bias": fc2.bias}  # fmt: skip
        for name, attn in (("self_attn", layer.self_attn), ("multihead_attn", layer.cross_attn)):
            weights[f"{name}.in_proj_weight"] = torch.cat(
                [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
            )
            weights[f"{name}.in_proj_bias"] = torch.cat(
                [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            )
            weights[f"{name}.out_proj.weight"] = attn.out_proj.weight
            weights[f"{name}.out_proj.bias"] = attn.out_proj.bias
        for i in (1, 2, 3):
            norm = getattr(layer, f"norm{i}")
            weights[f"norm{i}.weight"], weights[f"norm{i}.bias"] = norm.w, norm.b
        torch_layer.load_state_dict(weights)
        self.layer = torch_layer.eval()

    def forward(self, x, memory, self_attn_mask=None, memory_mask=None):
        def blocked(mask):  # torch's convention: True = blocked, one mask per head
            if mask is None:
                return None
            if mask.dim() == 3:
                mask = mask.repeat_interleave(self.layer.self_attn.num_heads, dim=0)
            return ~mask

        return self.layer(
            x, memory, tgt_mask=blocked(self_attn_mask), memory_mask=blocked(memory_mask)
        )


class TorchSinusoidalEncoding1D(nn.Module):
    """Adds the 1D sinusoidal table of the original transformer (exercise 1.4's
    SinusoidalPositionalEncoding1D), computed here, to tokens (B, N, C)."""

    def forward(self, x):
        N, C = x.shape[1], x.shape[2]
        position = torch.arange(N, dtype=torch.float64)[:, None]  # (N, 1)
        inv_freq = 10000.0 ** (-torch.arange(0, C, 2, dtype=torch.float64) / C)  # (C/2,)
        angles = position * inv_freq  # (N, C/2)
        table = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(N, C)  # sin, cos, ...
        return x + table.to(x)
