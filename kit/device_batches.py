"""Trainer batch sources: images kept as uint8 on the training device, batches cut out there.

A batch source (the Trainer's contract, see ``kit.trainer``) yields ready batches on the
device and can replay any epoch from any step (resumption). The classic pipeline (PIL
Resize -> RandomCrop -> ToTensor -> Normalize in DataLoader workers) decodes and resizes
every image again in every epoch, in Python, on the CPU; here each image is resized ONCE,
and every batch is one gather (random crop + flip) and one fused normalisation.

- ``ImageBatchSource``: images (optionally with a point each) -> normalised batches.
- ``WrappedBatchSource``: base of a source that changes another one's batches, keeping its
  length and seed (``ErasingBatchSource``, ``kit.attack.AdversarialBatches``).
- ``ErasingBatchSource``: random erasing on top of a training source.
- ``TensorBatches``: the smallest source, uint8 images -> [0, 1] floats in order.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from kit.image_ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_flip,
    normalize,
    sample_crop_offsets,
    transform_points,
)


class ImageBatchSource:
    """A Trainer batch source: uint8 images on the device, augmented per batch.

    Yields ``(images, labels)`` or, with ``points``, ``(images, points, labels)``, already on
    ``store.device``; images are normalised float (B, 3, crop, crop).

    Training (``train=True``): each epoch a fresh permutation (seeded by ``seed`` and the
    epoch, so a resumed run sees exactly the same batches), a random crop of every image and a
    random horizontal flip. Batches are ``batch_size`` images for the whole job; under DDP each
    of the ``world_size`` ranks takes its own equal slice of every batch (so 2 processes compute
    the same gradient as 1), and the final incomplete batch of an epoch is dropped.

    Evaluation (``train=False``): the store already holds centre crops; images come in order,
    every image exactly once, split into contiguous chunks across ranks (sum the counts with an
    all-reduce for exact accuracy).

    Args:
        store: (N, 3, H, W) uint8; for evaluation H == W == crop.
        sizes: (N, 2) valid (H, W) per image (defaults to the full store size).
        labels: (N,) int64 (-1 where unknown, e.g. a test set).
        points: optional (N, 2) float (x, y) per image, moved along with the crop/flip.
    """

    def __init__(
        self,
        store: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        crop: int,
        sizes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        if train and batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the {world_size} processes"
            )
        self.store = store
        self.device = store.device
        self.labels = labels.to(self.device)
        self.points = None if points is None else points.to(self.device)
        n = store.shape[0]
        if sizes is None:
            sizes = torch.tensor([store.shape[2], store.shape[3]]).expand(n, 2)
        self.sizes_cpu = sizes.cpu()
        self.batch_size, self.train, self.crop, self.flip = batch_size, train, crop, flip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.norm = dict(mean=mean, std=std, dtype=dtype, channels_last=channels_last)

    @property
    def num_samples(self) -> int:
        return self.store.shape[0]

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.train:
            return self.num_samples // self.batch_size
        mine = len(self._eval_indices())
        return -(-mine // self.batch_size)

    def state_dict(self) -> dict:
        """Everything that decides future batches: the seed (epoch plans derive from it)."""
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])

    def _eval_indices(self) -> torch.Tensor:
        return torch.arange(self.num_samples).tensor_split(self.world_size)[self.rank]

    def epoch_plan(self, epoch: int) -> dict:
        """Order, crop offsets and flips of every image for one epoch (CPU, deterministic)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_samples, generator=g)
        oy, ox = sample_crop_offsets(self.sizes_cpu[order], self.crop, g)
        flip = torch.rand(self.num_samples, generator=g) < 0.5 if self.flip else None
        return dict(order=order, oy=oy, ox=ox, flip=flip)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield this rank's batches of ``epoch``, starting at batch number ``start``."""
        if not self.train:
            idx = self._eval_indices().to(self.device)
            for b in range(start, len(self)):
                sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
                images = normalize(self.store[sel], **self.norm)
                extra = () if self.points is None else (self.points[sel],)
                yield (images, *extra, self.labels[sel])
            return
        # One host-to-device copy per epoch: no per-batch synchronisation with the GPU.
        plan = {
            k: (v.to(self.device) if v is not None else None)
            for k, v in self.epoch_plan(epoch).items()
        }
        per_rank = self.batch_size // self.world_size
        for b in range(start, len(self)):
            lo = b * self.batch_size + self.rank * per_rank
            s = slice(lo, lo + per_rank)
            sel, oy, ox = plan["order"][s], plan["oy"][s], plan["ox"][s]
            flip = None if plan["flip"] is None else plan["flip"][s]
            images = normalize(crop_flip(self.store, sel, oy, ox, flip, self.crop), **self.norm)
            extra = ()
            if self.points is not None:
                extra = (transform_points(self.points[sel], oy, ox, flip, self.crop),)
            yield (images, *extra, self.labels[sel])


class WrappedBatchSource:
    """Base of a batch source that changes the batches of another one (erasing, attacks):
    the length and the state that decides future batches (the seed) are the wrapped one's."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


class ErasingBatchSource(WrappedBatchSource):
    """Random erasing (Zhong et al., 2020) on top of another training batch source: with
    probability ``prob`` an image gets one rectangle (2-33% of its area, aspect 0.3-3.3)
    filled with one random grey/colour. Decided per epoch on the CPU (a resumed run erases
    the same rectangles) and applied per batch on the device with masks."""

    def __init__(self, source: ImageBatchSource, prob: float):
        super().__init__(source)
        self.prob = prob

    def _plan(self, epoch: int, n: int, channels: int, side: int) -> dict:
        g = torch.Generator().manual_seed(self.source.seed * 100_003 + epoch + 7_777_777)
        area = torch.empty(n).uniform_(0.02, 0.33, generator=g) * side * side
        aspect = torch.exp(torch.empty(n).uniform_(-1.2, 1.2, generator=g))
        h = (area * aspect).sqrt().round().clamp(1, side).long()
        w = (area / aspect).sqrt().round().clamp(1, side).long()
        y0 = (torch.rand(n, generator=g) * (side - h + 1)).long()
        x0 = (torch.rand(n, generator=g) * (side - w + 1)).long()
        on = torch.rand(n, generator=g) < self.prob
        fill = torch.rand(n, channels, generator=g)
        plan = dict(h=h, w=w, y0=y0, x0=x0, on=on, fill=fill)
        return {k: v.to(self.source.device) for k, v in plan.items()}

    def batches(self, epoch: int = 0, start: int = 0):
        crop, per_rank = self.source.crop, self.source.batch_size // self.source.world_size
        plan = self._plan(
            epoch, len(self) * self.source.batch_size, self.source.store.shape[1], crop
        )
        ar = torch.arange(crop, device=self.source.device)
        for b, (images, labels) in enumerate(self.source.batches(epoch, start), start=start):
            lo = b * self.source.batch_size + self.source.rank * per_rank
            p = {k: v[lo : lo + per_rank] for k, v in plan.items()}
            rows = (ar >= p["y0"][:, None]) & (ar < (p["y0"] + p["h"])[:, None])  # (B, crop)
            cols = (ar >= p["x0"][:, None]) & (ar < (p["x0"] + p["w"])[:, None])
            mask = (rows[:, :, None] & cols[:, None, :] & p["on"][:, None, None])[:, None]
            yield torch.where(mask, p["fill"][:, :, None, None].to(images.dtype), images), labels


class TensorBatches:
    """The smallest batch source: uint8 images (N, C, H, W) -> float [0, 1] batches, in order."""

    def __init__(self, images, labels, batch_size, device):
        self.images, self.labels = images, labels
        self.batch_size, self.device = batch_size, device

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def batches(self, epoch=0, start=0):
        for b in range(start, len(self)):
            s = slice(b * self.batch_size, (b + 1) * self.batch_size)
            images = self.images[s].to(self.device).float() / 255.0
            yield images, self.labels[s].to(self.device)
