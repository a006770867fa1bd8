"""Models for Question 3: classify the object under a point on a PixMo image.

Two models share one ResNet-34 trunk (ImageNet weights when available):

- ``PixMoModel`` is the assignment's starting point: ResNet-34 features pooled to p x p
  tokens of 512, a 2-layer 2-head transformer encoder, the mean token through an MLP head.
  It never looks at the point, so it can only guess which object is meant.
- ``PointPixMoModel`` uses the point four ways: it samples the feature maps AT the point
  (a "point token"), runs a crop centred on the point through the same trunk (a "crop
  token"), runs a small CNN of its own on a crop around the point (trained from scratch, so
  it learns even when the trunk has no ImageNet weights), and adds to every grid token a
  Fourier embedding of its offset from the point, so attention knows where each token lies
  relative to the point. The class is read from the point token after the encoder.

Both take ``(images (B, 3, S, S) normalised, points (B, 2) in pixels of the S x S image)``
and return logits ``(B, num_classes)``.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

RESNET34_FILE = "resnet34-b627a593.pth"  # torchvision's IMAGENET1K_V1 checkpoint name
TRUNK_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class WeightsError(ValueError):
    """A --weights file that cannot be used; the message is one line."""


class ResNet34Trunk(nn.Module):
    """torchvision's ResNet-34 without pooling and classifier: (B, 3, S, S) -> feature maps.

    ``forward`` returns the layer3 map (B, 256, S/16, S/16) and the layer4 map
    (B, 512, S/32, S/32). Parameter names match torchvision's (``conv1.weight``,
    ``layer4.2.bn2.bias``, ...), so its state dict loads directly.

    Args:
        trainable_from: first stage that trains ("layer4" as in the assignment, "layer3",
            "layer2", "layer1", "stem" for everything, or "none" for a frozen trunk).
    """

    def __init__(self, trainable_from: str = "layer4"):
        super().__init__()
        if trainable_from not in (*TRUNK_STAGES, "none"):
            raise ValueError(f"trainable_from must be one of {TRUNK_STAGES + ('none',)}")
        resnet = torchvision.models.resnet34(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.trainable_from = trainable_from
        self.pretrained = False  # set by load_resnet34_weights
        for stage in self.frozen_stages():
            for p in stage.parameters():
                p.requires_grad_(False)

    def stages(self) -> list[nn.Module]:
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def frozen_stages(self) -> list[nn.Module]:
        if self.trainable_from == "none":
            return self.stages()
        return self.stages()[: TRUNK_STAGES.index(self.trainable_from)]

    def batch_norms(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]

    def train(self, mode: bool = True):
        """Like nn.Module.train, but every BatchNorm keeps its statistics frozen (eval mode).

        Batches of 16 are too small to re-estimate them, and frozen statistics make a
        checkpoint of the trainable parameters complete (exact resumption). The BatchNorm
        scale/shift of trainable stages still train.
        """
        super().train(mode)
        for norm in self.batch_norms():
            norm.eval()
        return self

    @torch.no_grad()
    def calibrate_batch_norm(self, batches) -> None:
        """Set every BatchNorm's statistics to their average over ``batches`` of images.

        For a randomly initialised trunk (no ImageNet weights), whose default statistics
        (mean 0, variance 1) would not normalise anything. ``batches``: iterable of
        (B, 3, S, S) normalised images; use a fixed set so reruns give the same statistics.
        """
        norms = self.batch_norms()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over all calibration batches
            norm.train()
        for images in batches:
            self(images)
        for norm in norms:
            norm.momentum = 0.1
            norm.eval()

    @torch.no_grad()
    def fuse_frozen_batch_norm(self) -> int:
        """Fold each frozen stage's BatchNorm into the convolution before it; returns how many.

        With frozen statistics a BatchNorm is a fixed per-channel affine map, so
        ``bn(conv(x))`` equals one convolution with rescaled weights and a bias: the same
        outputs with fewer kernels (faster on a GPU and a CPU). Do it after loading weights
        and calibrating, before channels_last. Trainable stages are left as they are.
        """
        fused = 0
        for index, stage in enumerate(self.frozen_stages()):
            owners = [self] if index == 0 else list(stage.modules())  # the stem lives on self
            for owner in owners:
                pairs = [("conv1", "bn1"), ("conv2", "bn2")]
                for conv_name, bn_name in pairs:
                    conv, norm = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
                    if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                        setattr(owner, conv_name, _fused(conv, norm))
                        setattr(owner, bn_name, nn.Identity())
                        fused += 1
                down = getattr(owner, "downsample", None)
                if isinstance(down, nn.Sequential) and isinstance(down[-1], nn.BatchNorm2d):
                    owner.downsample = nn.Sequential(_fused(down[0], down[1]))
                    fused += 1
        return fused

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, S/4, S/4)
        x = self.layer2(self.layer1(x))  # (B, 128, S/8, S/8)
        mid = self.layer3(x)  # (B, 256, S/16, S/16)
        return mid, self.layer4(mid)  # (B, 512, S/32, S/32)


def _fused(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A frozen convolution computing ``norm(conv(x))`` of an eval-mode BatchNorm."""
    fused = fuse_conv_bn_eval(conv.eval(), norm.eval())
    fused.requires_grad_(False)
    return fused


def resnet34_cache_path() -> Path:
    """Where torchvision keeps the downloaded ImageNet ResNet-34 checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET34_FILE


def load_resnet34_weights(trunk: ResNet34Trunk, path=None, download=True, log=print) -> bool:
    """Load ImageNet weights into ``trunk``; return True when it is pretrained.

    Order: ``path`` if given (an error if unusable), then torchvision's cache
    (``resnet34_cache_path()``), then a download if ``download``. Offline with none of them:
    ONE warning line, and the trunk stays randomly initialised.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"--weights {path} not found; give a ResNet-34 state-dict file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsError(
                f"--weights {path} is not a readable torch checkpoint ({type(err).__name__})"
            ) from None
        source = str(path)
    elif resnet34_cache_path().is_file():
        state = torch.load(resnet34_cache_path(), map_location="cpu", weights_only=True)
        source = str(resnet34_cache_path())
    else:
        state, source = None, None
        if download:
            try:
                weights = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
                quiet = io.StringIO()  # torch.hub prints a "Downloading" line; we report ourselves
                with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                    state = weights.get_state_dict(progress=False)
                source = "torchvision download"
            except Exception as err:  # offline: URLError, timeouts, ...
                reason = f"download failed: {type(err).__name__}"
        else:
            reason = "downloads disabled"
        if state is None:
            log(
                f"WARNING: no ResNet-34 ImageNet weights ({resnet34_cache_path()} missing, "
                f"{reason}); the backbone is RANDOMLY initialised and the accuracy targets are "
                "out of reach. Pass --weights PATH to a resnet34 state dict."
            )
            return False
    if not isinstance(state, dict):
        raise WeightsError(f"{source} holds a {type(state).__name__}, not a state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # no classifier here
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise WeightsError(f"{source} is not a ResNet-34 state dict: {first}") from None
    trunk.pretrained = True
    log(f"ResNet-34 ImageNet weights loaded from {source}")
    return True


def mlp_head(dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def transformer_encoder(dim: int, layers: int, heads: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
    )
    # enable_nested_tensor=False: the fast path would silently skip work on padded batches;
    # we never pad, and a plain path keeps gradients and hooks simple for students.
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def grid_tokens(features: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, h, w) feature map -> (B, side*side, C) tokens by adaptive average pooling."""
    pooled = F.adaptive_avg_pool2d(features, side)  # (B, C, p, p)
    return pooled.flatten(2).transpose(1, 2)  # (B, p*p, C)


class PixMoModel(nn.Module):
    """The assignment's baseline, working: it ignores the point.

    ResNet-34 (only ``layer4`` trainable) -> adaptive pool to p x p tokens of 512 -> a 2-layer,
    2-head transformer encoder (with a learned position embedding per token) -> mean over
    tokens -> MLP head.

    Args:
        num_classes: number of classes (20 for PixMo).
        tokens_side: p; the encoder sees p*p tokens.
        num_layers, num_heads: transformer encoder depth and heads.
        head_hidden: MLP hidden width.
        dropout: dropout in the encoder and head.
        trainable_from: see ``ResNet34Trunk``.
    """

    def __init__(
        self,
        num_classes: int = 20,
        tokens_side: int = 2,
        num_layers: int = 2,
        num_heads: int = 2,
        head_hidden: int = 256,
        dropout: float = 0.1,
        trainable_from: str = "layer4",
    ):
        super().__init__()
        dim = 512
        self.tokens_side = tokens_side
        self.backbone = ResNet34Trunk(trainable_from)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens_side * tokens_side, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.encoder = transformer_encoder(dim, num_layers, num_heads, dropout)
        self.head = mlp_head(dim, head_hidden, num_classes, dropout)

    def forward(self, images: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, S, S), points ignored -> logits (B, num_classes)."""
        _, features = self.backbone(images)  # (B, 512, S/32, S/32)
        tokens = grid_tokens(features, self.tokens_side) + self.pos_embed  # (B, p*p, 512)
        tokens = self.encoder(tokens)  # (B, p*p, 512)
        return self.head(tokens.mean(dim=1))  # (B, num_classes)


class FourierEmbedding(nn.Module):
    """2-D coordinates in [-1, 1] -> ``dim`` features: sin/cos at octave frequencies, then linear.

    Input (..., 2) -> output (..., dim). Frequencies pi * 2^k for k < bands, so the embedding
    resolves both coarse and fine position differences.
    """

    def __init__(self, dim: int, bands: int = 8):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(bands), persistent=False)
        self.proj = nn.Linear(4 * bands + 2, dim)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        angles = coords[..., None] * self.freqs  # (..., 2, bands)
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 4*bands)
        return self.proj(torch.cat([coords, feats], dim=-1))  # (..., dim)


def to_unit(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel points (B, 2) -> grid_sample coordinates in [-1, 1] (align_corners=False)."""
    scale = torch.tensor([width, height], dtype=points.dtype, device=points.device)
    return 2 * points / scale - 1


def sample_at(features: torch.Tensor, unit_points: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample (B, C, h, w) maps at (B, 2) unit points -> (B, C)."""
    grid = unit_points[:, None, None, :].to(features.dtype)  # (B, 1, 1, 2)
    return F.grid_sample(features, grid, mode="bilinear", align_corners=False)[:, :, 0, 0]


def crop_around(images: torch.Tensor, unit_points: torch.Tensor, frac: float, size: int):
    """Square crops of side ``frac`` * S centred on the points, resized to ``size`` pixels.

    Parts of a crop that fall outside the image are zero (the normalised mean colour).
    Returns (B, 3, size, size).
    """
    batch = images.shape[0]
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = frac
    theta[:, 1, 1] = frac
    theta[:, :, 2] = unit_points.to(images.dtype)
    grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)  # (B, s, s, 2)
    return F.grid_sample(images, grid, mode="bilinear", align_corners=False)


def _like(crops: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``crops`` in the memory format of ``images`` (channels_last on the GPU path)."""
    if images.is_contiguous(memory_format=torch.channels_last):
        return crops.contiguous(memory_format=torch.channels_last)
    return crops


class LocalCNN(nn.Module):
    """A small CNN, trained from scratch, for the crop centred on the point: (B, 3, q, q) ->
    (B, dim).

    Four stages, each a stride-2 and a stride-1 3x3 convolution with BatchNorm and ReLU
    (32, 64, 128, 256 channels), so the map is q/16 a side. The output is the average of
    the map's central 2 x 2 cells, the part of the crop under the point, projected to
    ``dim`` and layer-normalised. Unlike the trunk's BatchNorms, these train normally
    (batch statistics in training, running statistics in eval).
    """

    def __init__(self, dim: int = 512, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers, width_in = [], 3
        for width in widths:
            layers += [
                nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            width_in = width
        self.features = nn.Sequential(*layers)
        # LayerNorm: the token enters at unit scale next to the trunk's features, whatever
        # their scale (else a from-scratch branch needs many steps just to be heard).
        self.proj = nn.Sequential(nn.Linear(width_in, dim), nn.LayerNorm(dim))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        maps = self.features(crops)  # (B, 256, q/16, q/16)
        h, w = maps.shape[-2:]
        top, left = max(h // 2 - 1, 0), max(w // 2 - 1, 0)
        centre = maps[:, :, top : top + 2, left : left + 2].mean(dim=(2, 3))  # (B, 256)
        return self.proj(centre)  # (B, dim)


class PointPixMoModel(nn.Module):
    """A point-aware PixMo classifier (see the module docstring).

    Tokens fed to the encoder, all of width 512:
      [point token, crop token (optional), p*p grid tokens]
    - point token: layer4 and (projected) layer3 features bilinearly sampled at the point,
      plus a Fourier embedding of the point's position, plus (optional) the ``LocalCNN``
      features of a ``crop_frac`` x S crop around the point resized to ``local_size``.
    - crop token: the trunk run on a ``crop_frac`` x S crop centred on the point, resized to
      ``crop_size`` pixels (sees the object at a higher resolution), average pooled.
    - grid tokens: pooled layer4 features plus a Fourier embedding of each token centre's
      offset from the point (so the same image with another point gives other tokens).
    The encoder output at the point token goes through the MLP head.

    Args:
        num_classes, tokens_side, num_layers, num_heads, head_hidden, dropout,
        trainable_from: as in ``PixMoModel``.
        fourier_bands: frequencies of the position embeddings.
        crop_stream: add the crop token.
        crop_frac: crop side as a fraction of the image side.
        crop_size: side in pixels the crop is resized to before the trunk.
        local_size: side in pixels of the LocalCNN's crop; 0 = no LocalCNN.
    """

    def __init__(
        self,
        num_classes: int = 20,
        tokens_side: int = 4,
        num_layers: int = 2,
        num_heads: int = 2,
        head_hidden: int = 256,
        dropout: float = 0.1,
        trainable_from: str = "layer4",
        fourier_bands: int = 8,
        crop_stream: bool = True,
        crop_frac: float = 0.3,
        crop_size: int = 112,
        local_size: int = 0,
    ):
        super().__init__()
        dim = 512
        self.tokens_side, self.crop_stream = tokens_side, crop_stream
        self.crop_frac, self.crop_size, self.local_size = crop_frac, crop_size, local_size
        self.backbone = ResNet34Trunk(trainable_from)
        self.mid_proj = nn.Linear(256, dim)  # layer3 features at the point -> token width
        self.point_norm = nn.LayerNorm(dim)  # trunk features at the point, at unit scale
        self.point_embed = FourierEmbedding(dim, fourier_bands)
        self.offset_embed = FourierEmbedding(dim, fourier_bands)
        self.local_cnn = LocalCNN(dim) if local_size else None
        self.type_embed = nn.Parameter(torch.zeros(3, dim))  # point / crop / grid token types
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.encoder = transformer_encoder(dim, num_layers, num_heads, dropout)
        self.head = mlp_head(dim, head_hidden, num_classes, dropout)

    def forward(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) normalised, points (B, 2) pixels -> logits (B, num_classes)."""
        _, _, height, width = images.shape
        unit = to_unit(points.float(), height, width)  # (B, 2) in [-1, 1]
        mid, features = self.backbone(images)  # (B, 256, S/16, S/16), (B, 512, S/32, S/32)

        sampled = sample_at(features, unit).float() + self.mid_proj(sample_at(mid, unit).float())
        point_token = self.point_norm(sampled) + self.point_embed(unit) + self.type_embed[0]
        if self.local_cnn is not None:
            local = crop_around(images, unit, self.crop_frac, self.local_size)  # (B, 3, q, q)
            point_token = point_token + self.local_cnn(_like(local, images)).float()  # (B, 512)
        tokens = [point_token[:, None]]  # list of (B, n, 512)

        if self.crop_stream:
            crops = crop_around(images, unit, self.crop_frac, self.crop_size)
            _, crop_features = self.backbone(_like(crops, images))  # (B, 512, s/32, s/32)
            crop_token = crop_features.float().mean(dim=(2, 3)) + self.type_embed[1]  # (B, 512)
            tokens.append(crop_token[:, None])

        side = self.tokens_side
        grid = grid_tokens(features, side).float()  # (B, p*p, 512)
        centres = (torch.arange(side, device=images.device, dtype=torch.float32) + 0.5) / side
        centres = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # (p, p, 2)
        centres = 2 * centres.reshape(1, side * side, 2) - 1  # (1, p*p, 2) in [-1, 1], (x, y)
        offsets = (centres - unit[:, None, :]) / 2  # (B, p*p, 2) in [-1, 1]
        tokens.append(grid + self.offset_embed(offsets) + self.type_embed[2])

        tokens = self.encoder(torch.cat(tokens, dim=1))  # (B, 1 [+1] + p*p, 512)
        return self.head(tokens[:, 0])  # (B, num_classes)


MODELS = {"baseline": PixMoModel, "point": PointPixMoModel}


def build_pixmo_model(kind: str, num_classes: int = 20, **kwargs) -> nn.Module:
    """``kind`` "baseline" (the assignment's PixMoModel) or "point" (PointPixMoModel)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model '{kind}'; valid models: {', '.join(MODELS)}")
    return MODELS[kind](num_classes=num_classes, **kwargs)
