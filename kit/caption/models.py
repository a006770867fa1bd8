"""The models of Question 5: YOUR ``CaptioningTransformer`` (exercise 1.13, built from your
decoder layers, attention, LayerNorm and positional encoding) on image features.

- COCO: the features are CS231n's, one vector per image (VGG-16 fc7 or its PCA): they are
  the captioner's input as they are.
- Fashion-MNIST scenes: ``SceneEncoder``, a small CNN trained jointly with the captioner,
  turns a 56x56 scene into a grid of region features (one per 28x28 cell by default), the
  decoder's memory.

``CaptionModel`` wraps the two for the kit's Trainer: ``model(inputs, words)`` returns the
scores flattened to (N * T, V) (the Trainer's (B, C) logits); ``model.sample(inputs, L)``
generates captions greedily (N, L).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

import transformer_utils as tu


class SceneEncoder(nn.Module):
    """uint8 scenes (N, 1, side, side) -> region features (N, S, dim).

    conv 3x3 - BatchNorm - ReLU stages (a 2x2 max pool after each of the first two), then a
    ``patch`` x ``patch`` convolution with stride ``patch`` that cuts the feature map into
    S regions: on 56x56 scenes the map is 14x14 and patch 7 gives one region per 28x28 cell
    (S = 4). Each region gets a learned position embedding: the decoder's cross-attention
    treats its memory as a set, and the captions name the items in reading order. The
    scene is normalised here with Fashion-MNIST's mean and std."""

    def __init__(self, channels: Sequence[int], dim: int, side: int = 56, patch: int = 7,
                 mean: float = 0.2860, std: float = 0.3530):  # fmt: skip
        super().__init__()
        layers, c = [], 1
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.body = nn.Sequential(*layers)
        self.regions = nn.Conv2d(c, dim, patch, stride=patch)
        grid = side // 2 ** min(2, len(channels)) // patch
        self.position = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.mean, self.std = mean, std

    def forward(self, scenes: torch.Tensor) -> torch.Tensor:
        x = (scenes.float() / 255.0 - self.mean) / self.std  # (N, 1, H, W)
        x = self.regions(self.body(x))  # (N, dim, h, w)
        return x.flatten(2).transpose(1, 2) + self.position  # (N, S = h * w, dim)


class CaptionModel(nn.Module):
    """An image encoder (None: the inputs are features already) and the captioner."""

    def __init__(self, captioner: nn.Module, encoder: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.captioner = captioner

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs if self.encoder is None else self.encoder(inputs)

    def forward(self, inputs: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """inputs (N, D) features or (N, 1, H, W) scenes; words (N, T) -> scores (N * T, V)."""
        scores = self.captioner(self.features(inputs), words)  # (N, T, V)
        return scores.flatten(0, 1)

    @torch.no_grad()
    def sample(self, inputs: torch.Tensor, max_length: int) -> torch.Tensor:
        """Greedy captions (N, max_length), without <START> (your sample, exercise 1.13)."""
        return self.captioner.sample(self.features(inputs), max_length)


def build_caption_model(
    word_to_idx: dict,
    input_dim: int,
    *,
    wordvec_dim: int,
    num_heads: int,
    num_layers: int,
    mlp_ratio: float,
    dropout: float,
    encoder_channels: Sequence[int] | None = None,
) -> CaptionModel:
    """Your CaptioningTransformer, behind a SceneEncoder when ``encoder_channels`` is given
    (its regions are then ``input_dim`` wide)."""
    encoder = SceneEncoder(encoder_channels, input_dim) if encoder_channels else None
    captioner = tu.CaptioningTransformer(
        word_to_idx, input_dim, wordvec_dim, num_heads=num_heads, num_layers=num_layers,
        max_length=50, mlp_ratio=mlp_ratio, dropout=dropout,
    )  # fmt: skip
    return CaptionModel(captioner, encoder)
