"""A Vision Transformer with torchvision's architecture and state-dict names, plus prompts.

The model is a drop-in twin of ``torchvision.models.VisionTransformer``: the same modules
under the same names, so

    ours = vit_b_32()
    ours.load_state_dict(torchvision.models.vit_b_32().state_dict(), strict=True)

works and both give the same outputs (fp32, eval mode). Two things are added:

- **Prompts** (Visual Prompt Tuning, Jia et al. 2022). ``forward(x, prompts=...)`` inserts
  learnable tokens right after the CLS token, *after* the positional embedding was added
  (prompts have no position). VPT-Shallow inserts them before the first layer only; VPT-Deep
  gives every layer fresh prompts that replace the previous layer's prompt outputs.
- **Attention weights** for visualisation: ``forward(x, return_attention=True)`` uses an
  explicit softmax path and also returns each layer's attention map. The normal path uses
  ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on the GPU).

Sequence layout inside the encoder, with P prompts and N = (image_size / patch_size)^2 patches:

    [CLS, prompt_1 .. prompt_P, patch_1 .. patch_N]        # (B, 1 + P + N, D)
"""

from __future__ import annotations

import math
import os
import socket
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Hyper-parameters of the encoders the kit knows. ``vit_tiny_test`` is a small random model for
# tests and CPU smoke runs; it has no pretrained weights.
ENCODER_SPECS = {
    "vit_b_32": dict(
        image_size=224, patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072
    ),
    "vit_tiny_test": dict(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ),
}

# torchvision's ImageNet weights for ViT-B/32 (ViT_B_32_Weights.IMAGENET1K_V1).
VIT_B_32_FILE = "vit_b_32-d86f8d99.pth"
VIT_B_32_URL = "https://download.pytorch.org/models/" + VIT_B_32_FILE


class MLPBlock(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout; indices 0 and 3 match torchvision."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float):
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Parameters ``in_proj_weight`` (3D, D) and ``in_proj_bias`` (3D,) hold the stacked query,
    key and value projections; ``out_proj`` is the output projection. Keeping those names
    lets torchvision's checkpoints load unchanged.
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_dim, hidden_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden_dim))
        self.out_proj = nn.Linear(hidden_dim, hidden_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """x: (B, T, D) -> (output (B, T, D), attention (B, H, T, T) or None)."""
        b, t, d = x.shape
        h = self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3D)
        qkv = qkv.view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D/H)
        q, k, v = qkv.unbind(0)
        p = self.dropout if self.training else 0.0
        if need_weights:
            # Explicit path: the same maths as the fused kernel, but we keep the weights.
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)  # (B, H, T, T)
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p) @ v  # (B, H, T, D/H)
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, D/H)
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out_proj(out), weights


class EncoderBlock(nn.Module):
    """Pre-norm transformer layer: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = Attention(hidden_dim, num_heads, attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """x: (B, T, D) -> ((B, T, D), attention (B, H, T, T) or None)."""
        y, weights = self.self_attention(self.ln_1(x), need_weights=need_weights)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x)), weights


class Encoder(nn.Module):
    """Positional embedding, the stack of layers ``encoder_layer_{i}``, and a final LayerNorm."""

    def __init__(
        self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
    ):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        layers = OrderedDict(
            (
                f"encoder_layer_{i}",
                EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout),
            )
            for i in range(num_layers)
        )
        self.layers = nn.Sequential(layers)
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(
        self, x: torch.Tensor, prompts: torch.Tensor | None = None, return_attention: bool = False
    ):
        """Run the encoder, optionally with prompts.

        Inputs:
            x: (B, 1 + N, D) CLS token followed by the patch embeddings (no positions yet).
            prompts: None, or (L, B, P, D) / (L, P, D) with L == 1 (VPT-Shallow: inserted before
                the first layer and then carried along) or L == num_layers (VPT-Deep: layer i
                gets prompts[i], replacing the prompt outputs of layer i - 1).
            return_attention: also return each layer's attention weights (explicit path).
        Returns:
            (B, 1 + P + N, D) normalised tokens, and a list of (B, H, T, T) maps if asked.
        """
        x = self.dropout(x + self.pos_embedding)  # positions for CLS and patches only
        num_prompts = 0
        if prompts is not None:
            if prompts.shape[0] not in (1, len(self.layers)):
                raise ValueError(
                    f"prompts must have 1 (shallow) or {len(self.layers)} (deep) layers, "
                    f"got {prompts.shape[0]}"
                )
            num_prompts = prompts.shape[-2]
        attentions = []
        for i, layer in enumerate(self.layers):
            if prompts is not None and (i == 0 or prompts.shape[0] > 1):
                p = prompts[i].expand(x.shape[0], -1, -1).to(x.dtype)  # (B, P, D)
                # Layer 0: insert after CLS. Deep, layer i >= 1: overwrite the prompt slots.
                rest = x[:, 1:] if i == 0 else x[:, 1 + num_prompts :]
                x = torch.cat([x[:, :1], p, rest], dim=1)  # (B, 1 + P + N, D)
            x, weights = layer(x, need_weights=return_attention)
            if return_attention:
                attentions.append(weights)
        x = self.ln(x)
        return (x, attentions) if return_attention else x


class VisionTransformer(nn.Module):
    """torchvision-compatible ViT (image classifier) that also takes prompts.

    Args:
        image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim: architecture.
        dropout, attention_dropout: dropout rates (0 for the pretrained models).
        num_classes: size of ``heads.head`` (1000 for ImageNet weights).
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(
            self.seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
        )
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> CLS + patch embeddings (B, 1 + N, D), before positions."""
        b, _, h, w = images.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {h}x{w}")
        x = self.conv_proj(images)  # (B, D, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_token.expand(b, -1, -1).to(x.dtype)  # (B, 1, D)
        return torch.cat([cls, x], dim=1)

    def features(self, images, prompts=None, return_attention=False):
        """The normalised CLS token (B, D) (and attention maps if ``return_attention``)."""
        out = self.encoder(self.tokens(images), prompts, return_attention)
        if return_attention:
            x, attentions = out
            return x[:, 0], attentions
        return out[:, 0]

    def forward(self, images, prompts=None, return_attention=False):
        """images (B, 3, S, S) -> logits (B, num_classes) [, list of (B, H, T, T)]."""
        out = self.features(images, prompts, return_attention)
        if return_attention:
            return self.heads(out[0]), out[1]
        return self.heads(out)


def build_vit(
    encoder_name: str = "vit_b_32", image_size: int | None = None, **kwargs
) -> VisionTransformer:
    """A randomly initialised ViT from ``ENCODER_SPECS`` (``image_size`` may override)."""
    if encoder_name not in ENCODER_SPECS:
        raise ValueError(f"unknown encoder '{encoder_name}'; known: {', '.join(ENCODER_SPECS)}")
    spec = dict(ENCODER_SPECS[encoder_name], **kwargs)
    if image_size is not None:
        spec["image_size"] = image_size
    return VisionTransformer(**spec)


class WeightsSource(NamedTuple):
    """Where the backbone weights came from: ``kind`` in {'path', 'cache', 'download', 'random'}."""

    kind: str
    path: str | None


def find_vit_b_32_weights(
    weights_path: str | None = None, allow_download: bool = True
) -> WeightsSource:
    """Decide where ViT-B/32 ImageNet weights come from, without loading them.

    Order: an explicit ``weights_path``; torchvision's cache file
    ``torch.hub.get_dir()/checkpoints/vit_b_32-d86f8d99.pth``; a download (if allowed and the
    network works, torchvision's own mechanism); otherwise 'random'.
    Raises FileNotFoundError if an explicit path does not exist.
    """
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"weights file {weights_path} does not exist")
        return WeightsSource("path", str(weights_path))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VIT_B_32_FILE
    if cached.is_file():
        return WeightsSource("cache", str(cached))
    if allow_download and os.environ.get("VIT_OFFLINE", "") != "1":
        return WeightsSource("download", VIT_B_32_URL)
    return WeightsSource("random", None)


def load_vit_b_32_state_dict(source: WeightsSource) -> dict | None:
    """The ImageNet state dict for ``source`` (None if the download fails or source is random)."""
    if source.kind in ("path", "cache"):
        state = torch.load(source.path, map_location="cpu", weights_only=True)
        # Accept our own checkpoints' layout too: {'model': state_dict}.
        return state.get("model", state) if isinstance(state, dict) else state
    if source.kind == "download":
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # a firewalled network must not hang the run
        try:
            return torch.hub.load_state_dict_from_url(
                source.path, map_location="cpu", progress=True
            )
        except Exception:  # offline: no network is the normal case here, not a bug
            return None
        finally:
            socket.setdefaulttimeout(old_timeout)
    return None


def interpolate_pos_embedding(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resize a (1, 1 + g*g, D) positional embedding to a new_grid x new_grid patch grid."""
    cls, grid = pos[:, :1], pos[:, 1:]
    g = int(math.isqrt(grid.shape[1]))
    if g == new_grid:
        return pos
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)  # (1, g'*g', D)
    return torch.cat([cls, grid], dim=1)


def vit_b_32(
    weights: str | None = None, image_size: int = 224, allow_download: bool = True, log=print
):
    """ViT-B/32 with our forward (prompts, attention maps) and torchvision's weights.

    Args:
        weights: None for a random model; "IMAGENET1K_V1" for torchvision's ImageNet weights
            (cache, then download); or a path to a ``.pth`` state dict with torchvision's names.
        image_size: input size; other than 224 interpolates the positional embedding.
        allow_download: if False, never touch the network.
        log: where the one-line warning goes when ImageNet weights cannot be found.
    Returns:
        the model; ``model.weights_source`` is a ``WeightsSource`` saying where the weights
        came from (kind 'random' if none was loaded).
    """
    model = build_vit("vit_b_32")
    source = WeightsSource("random", None)
    if weights is not None:
        source = find_vit_b_32_weights(
            None if weights == "IMAGENET1K_V1" else weights, allow_download
        )
        state = load_vit_b_32_state_dict(source)
        if state is None:
            source = WeightsSource("random", None)
            log(
                "WARNING: no ViT-B/32 ImageNet weights (no --weights file, nothing in torchvision's "
                f"cache {Path(torch.hub.get_dir()) / 'checkpoints' / VIT_B_32_FILE}, no network): "
                "the backbone is RANDOMLY initialised and the accuracy targets are out of reach."
            )
        else:
            model.load_state_dict(state, strict=True)
    if image_size != model.image_size:
        resized = build_vit("vit_b_32", image_size=image_size)
        state = model.state_dict()
        state["encoder.pos_embedding"] = interpolate_pos_embedding(
            state["encoder.pos_embedding"], image_size // model.patch_size
        )
        resized.load_state_dict(state, strict=True)
        model = resized
    model.weights_source = source
    return model
