"""Image operations on uint8 tensors, a whole batch at a time on the training device.

The classic pipeline (PIL Resize -> RandomCrop -> ToTensor -> Normalize in DataLoader workers)
decodes and resizes every image again in every epoch, in Python, on the CPU. Here each image
is resized ONCE and kept as uint8 on the device; every batch is then cut out with a single
gather (random crop + horizontal flip in one indexing op) and normalised in one fused
multiply-add. Nothing per-image happens in Python during training.

Pieces (``kit.device_batches`` builds the Trainer's batch sources from them; Question 3
reuses them for images with a point):

- ``resize_shorter_side`` / ``center_crop``: torchvision's eval transform on uint8 tensors.
- ``pad_stack``: images of different sizes -> one (N, 3, Hmax, Wmax) uint8 store + sizes.
- ``sample_crop_offsets``: RandomCrop's offsets, uniform over each image's valid range.
- ``crop_flip``: gather (B, 3, h, w) crops from the store, optionally mirrored.
- ``transform_points``: move (x, y) points by the same crop/flip (what a point-based task needs).
- ``normalize``: uint8 -> float, (x / 255 - mean) / std, optionally channels_last.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_chw_uint8(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 numpy image (H, W, 3) -> CHW uint8 tensor (3, H, W): a view where it can be,
    a copy when the array is read-only (e.g. ``np.asarray`` of a PIL image), which torch
    cannot wrap safely."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, H', W') uint8 with min(H', W') == size (bilinear, antialiased),
    exactly like ``torchvision.transforms.Resize(size)``."""
    # torchvision only here: importing it costs about 2 s, which Question 4's demo never needs
    import torchvision.transforms.v2.functional as TF

    return TF.resize(image, [size], antialias=True)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size), like ``torchvision.transforms.CenterCrop``."""
    import torchvision.transforms.v2.functional as TF

    return TF.center_crop(image, [size, size])


def pad_stack(images: Sequence[torch.Tensor], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (3, H_i, W_i) uint8 images into a zero-padded store.

    Returns:
        store: (N, 3, Hmax, Wmax) uint8, image i in the top-left corner.
        sizes: (N, 2) int64, the valid (H_i, W_i) of each image.
    """
    hmax = max(im.shape[1] for im in images)
    wmax = max(im.shape[2] for im in images)
    device = device if device is not None else images[0].device
    store = torch.zeros(len(images), 3, hmax, wmax, dtype=torch.uint8, device=device)
    for i, im in enumerate(images):
        store[i, :, : im.shape[1], : im.shape[2]] = im
    sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in images], dtype=torch.long)
    return store, sizes.to(device)


def sample_crop_offsets(
    sizes: torch.Tensor, crop: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of random crops, uniform like ``RandomCrop(crop)``.

    Args:
        sizes: (B, 2) valid (H, W) of each image, all >= crop (CPU tensor).
        generator: a CPU generator (so results don't depend on the device).
    Returns:
        oy, ox: (B,) int64 offsets with 0 <= oy <= H - crop and 0 <= ox <= W - crop.
    """
    room = (sizes - crop + 1).double()  # number of valid offsets per axis
    u = torch.rand(sizes.shape, generator=generator, dtype=torch.float64)
    offsets = (u * room).floor().long().clamp_min(0)  # (B, 2)
    return offsets[:, 0], offsets[:, 1]


def crop_flip(
    store: torch.Tensor,
    index: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    flip: torch.Tensor | None,
    crop: int,
) -> torch.Tensor:
    """Cut (B, 3, crop, crop) patches out of ``store`` in one gather, mirrored where ``flip``.

    Args:
        store: (N, 3, H, W) uint8 on the device.
        index: (B,) which images; oy, ox: (B,) top-left corners; flip: (B,) bool or None.
    """
    ar = torch.arange(crop, device=store.device)
    rows = oy[:, None] + ar  # (B, crop)
    cols = ar.expand(len(index), crop)  # (B, crop)
    if flip is not None:
        # A mirrored crop reads the same columns right-to-left.
        cols = torch.where(flip[:, None], crop - 1 - cols, cols)
    cols = ox[:, None] + cols
    ch = torch.arange(store.shape[1], device=store.device)
    return store[
        index[:, None, None, None],
        ch[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (B, 3, crop, crop)


def transform_points(
    points: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor | None, crop: int
) -> torch.Tensor:
    """Move (B, 2) points (x, y), in continuous pixel coordinates of the stored image, into the
    crop made by ``crop_flip`` with the same arguments. A pixel centre at column c (x = c + 0.5)
    lands at column crop - 1 - c after the flip, i.e. x -> crop - x."""
    x = points[:, 0] - ox.to(points.dtype)
    y = points[:, 1] - oy.to(points.dtype)
    if flip is not None:
        x = torch.where(flip, crop - x, x)
    return torch.stack([x, y], dim=1)


@functools.lru_cache(maxsize=16)
def _affine(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of shape (1, 3, 1, 1) on ``device``, made once: creating them per batch
    would copy from the host each time, and that copy waits for the GPU to catch up."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (1.0 / (255.0 * std_t)).to(device), (-mean_t / std_t).to(device)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float ``(x / 255 - mean) / std`` as one multiply-add."""
    scale, shift = _affine(images.device, tuple(mean), tuple(std))
    out = torch.addcmul(shift, images.float(), scale).to(dtype)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
