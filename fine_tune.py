"""Fine-tuning a pretrained ViT (Question 2): the models (linear probe, Visual Prompt Tuning,
full fine-tuning).

Models
------
- ``ViTLinear(n_classes)``: frozen ViT-B/32 backbone (a registered submodule, kept in eval
  mode even when the model trains) + a trainable linear head on the CLS token.
  ``train_backbone=True`` turns it into full fine-tuning.
- ``ViTPrompt(n_classes, num_prompts=10, deep=True)``: the same frozen backbone with Visual
  Prompt Tuning; only the prompts and the head train.

The training loop shared by every demo lives in ``kit/trainer.py``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from vision_transformer import ENCODER_SPECS, VisionTransformer, build_vit, vit_b_32

# ====================================================================== models


def build_backbone(
    encoder_name: str = "vit_b_32",
    weights: str | None = "IMAGENET1K_V1",
    image_size: int | None = None,
    log: Callable[[str], Any] = print,
) -> VisionTransformer:
    """A ViT whose ``heads`` is replaced by Identity, so ``backbone(x)`` returns CLS features.

    ``weights``: "IMAGENET1K_V1" (torchvision cache, then download), a file path, or None
    (random, silently: for tests). Only vit_b_32 has pretrained weights.
    """
    if encoder_name == "vit_b_32":
        model = vit_b_32(weights=weights, image_size=image_size or 224, log=log)
    else:
        model = build_vit(encoder_name, image_size=image_size)
        if weights is not None:
            log(f"NOTE: '{encoder_name}' has no pretrained weights; its backbone is random.")
    model.heads = nn.Identity()
    return model


class _BackboneClassifier(nn.Module):
    """Shared plumbing: a (frozen) backbone registered as a submodule + a linear head."""

    def __init__(self, n_classes, encoder_name, weights, image_size, train_backbone, log):
        super().__init__()
        if encoder_name not in ENCODER_SPECS:
            raise ValueError(f"unknown encoder '{encoder_name}'; known: {', '.join(ENCODER_SPECS)}")
        self.backbone = build_backbone(encoder_name, weights, image_size, log)
        self.train_backbone = train_backbone
        self.backbone.requires_grad_(train_backbone)
        self.head = nn.Linear(self.backbone.hidden_dim, n_classes)

    def train(self, mode: bool = True):
        """Like nn.Module.train, but a frozen backbone always stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self


class ViTLinear(_BackboneClassifier):
    """Linear probe: frozen pretrained ViT + trainable ``head``; images (B,3,S,S) -> (B,C).

    ``train_backbone=True`` makes every parameter trainable (full fine-tuning).
    """

    def __init__(
        self,
        n_classes: int,
        encoder_name: str = "vit_b_32",
        weights: str | None = "IMAGENET1K_V1",
        image_size: int | None = None,
        train_backbone: bool = False,
        log: Callable[[str], Any] = print,
    ):
        super().__init__(n_classes, encoder_name, weights, image_size, train_backbone, log)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class ViTPrompt(_BackboneClassifier):
    """Visual Prompt Tuning: learnable prompt tokens + head on a frozen ViT.

    Args:
        n_classes: outputs of the head.
        num_prompts: prompt tokens P per prompted layer.
        deep: VPT-Deep (fresh prompts for each of the L layers) or VPT-Shallow (first layer).
        prompt_dropout: dropout on the prompt tokens during training (0.1 in the VPT paper's
            deep runs).
    ``prompts`` has shape (L or 1, P, D), initialised uniform in [-v, v] with
    v^2 = 6 / (D + D) (Xavier uniform for a D x D "projection", as in the VPT code).
    """

    def __init__(
        self,
        n_classes: int,
        encoder_name: str = "vit_b_32",
        num_prompts: int = 10,
        deep: bool = True,
        prompt_dropout: float = 0.0,
        weights: str | None = "IMAGENET1K_V1",
        image_size: int | None = None,
        log: Callable[[str], Any] = print,
    ):
        super().__init__(n_classes, encoder_name, weights, image_size, False, log)
        d = self.backbone.hidden_dim
        layers = self.backbone.num_layers if deep else 1
        v = math.sqrt(6.0 / (d + d))
        self.prompts = nn.Parameter(torch.empty(layers, num_prompts, d).uniform_(-v, v))
        self.prompt_dropout = nn.Dropout(prompt_dropout)

    def forward(self, images: torch.Tensor, return_attention: bool = False):
        """images (B, 3, S, S) -> logits (B, C) [, attention maps (B, H, 1+P+N, 1+P+N) per layer]."""
        prompts = self.prompts
        if self.training and self.prompt_dropout.p > 0:
            # A separate dropout mask per image, as in the VPT code.
            prompts = prompts.unsqueeze(1).expand(-1, images.shape[0], -1, -1)  # (L, B, P, D)
            prompts = self.prompt_dropout(prompts)
        out = self.backbone(images, prompts, return_attention)
        if return_attention:
            return self.head(out[0]), out[1]
        return self.head(out)
