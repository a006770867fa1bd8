"""Question 3's recipe: the settings, data and model of a PixMo run (demo_pixmo.py).

- ``PixmoConfig``: every setting of a run, the training ones (``TrainConfig``, with this
  demo's Adam recipe) and the model and data ones; config.yml's ``pixmo:`` presets
  override them.
- ``pixmo_data_dir``: the data folder, or a generated synthetic PixMo when none was asked
  for and the default folder is missing.
- ``load_splits``: every split read, checked, padded and resized once on the device.
- ``PixmoBatchSource`` / ``batch_sources``: batches of (images, points, labels) augmented on
  the device, the point moved with the pixels (``custom_dataset.apply_augmentation``).
- ``build_model``: the preset's model of model.py, with ImageNet weights when available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from custom_dataset import (
    PIXMO_NUM_CLASSES,
    PixmoPointsDataset,
    apply_augmentation,
    load_pixmo_split,
    normalize_pixmo,
    sample_augmentation,
)
from kit import cli
from kit.errors import UserError
from kit.pixmo import synthetic
from kit.trainer import TrainConfig
from model import WeightsError, build_pixmo_model, load_resnet34_weights

DEFAULT_DATA_DIR = "pixmo_data"
SYNTHETIC_DATA_DIR = "synthetic-data/pixmo_data"  # at the real sizes; other sizes: -<sizes>
REAL_SYNTHETIC = ([2500, 500, 500], 300, 700)  # sizes, min side, max side: the real set's


def synthetic_data_dir(sizes, min_side: int, max_side: int) -> str:
    """Where a synthetic PixMo of these sizes is generated: one folder per size, so that the
    smoke preset and the full-size presets never regenerate each other's data."""
    if (list(sizes), min_side, max_side) == REAL_SYNTHETIC:
        return SYNTHETIC_DATA_DIR
    return f"{SYNTHETIC_DATA_DIR}-{'-'.join(map(str, sizes))}-{min_side}to{max_side}px"


@dataclass
class PixmoConfig(TrainConfig):
    """Every setting of a PixMo run: the training settings (TrainConfig, with this demo's
    recipe below) and the model and data ones; config.yml presets override any of them."""

    # model (see model.py)
    model: Literal["baseline", "point"] = "baseline"
    tokens_side: int = 2  # p: the encoder sees p x p grid tokens
    num_layers: int = 2
    num_heads: int = 2
    head_hidden: int = 256
    dropout: float = 0.1
    trainable_from: Literal["stem", "layer1", "layer2", "layer3", "layer4", "none"] = "layer4"
    fourier_bands: int = 8  # point model only
    crop_stream: bool = True  # point model only
    crop_frac: float = 0.3
    crop_size: int = 112
    local_size: int = 0  # point model only: LocalCNN crop side in pixels (0 = no LocalCNN)
    weights: str = ""  # ResNet-34 state dict; "" = torchvision's cache, then a download
    download_weights: bool = True
    bn_calibration_images: int = 256  # random trunk only: BatchNorm statistics from these
    fuse_frozen_bn: bool = True  # fold frozen BatchNorms into their convs (same outputs, faster)
    # data
    data_dir: str = DEFAULT_DATA_DIR
    image_size: int = 224  # images are padded to a square and resized to this once
    augment: bool = False  # random crop/scale/flip moving the point along
    min_scale: float = 0.6
    max_aspect: float = 1.333
    flip_p: float = 0.5
    max_train_images: int = 0  # 0 = all; reduced runs use fewer
    max_val_images: int = 0
    # synthetic data (used only without --data_dir, when the default data folder is missing)
    synthetic_sizes: list[int] = field(default_factory=lambda: [2500, 500, 500])
    synthetic_min_side: int = 300
    synthetic_max_side: int = 700
    channels_last: bool = True  # on CUDA only
    # training: this demo's recipe (AdamW with weight_decay 0 is exactly Adam)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.0
    scheduler: Literal["multistep", "cosine", "constant"] = "constant"
    milestones: list[int] = field(default_factory=list)
    epochs: int = 20
    batch_size: int = 16  # examples per optimiser step, over all processes
    eval_batch_size: int = 64  # per process


def banner() -> str:
    """The synthetic-data warning, with where the real data comes from."""
    return cli.synthetic_banner(synthetic.BANNER, "pixmo", DEFAULT_DATA_DIR)


def pixmo_data_dir(cfg: PixmoConfig, ctx) -> tuple[Path, bool]:
    """The data folder to read, and whether it is synthetic (generated here if needed)."""
    if len(cfg.synthetic_sizes) != 3:
        raise UserError("synthetic_sizes must list 3 numbers (train, val, test) in config.yml")
    sizes, sides = cfg.synthetic_sizes, (cfg.synthetic_min_side, cfg.synthetic_max_side)
    wanted = synthetic.generation_info(sizes, *sides, seed=0)
    path, generated = cli.choose_data_folder(
        cfg.data_dir,
        DEFAULT_DATA_DIR,
        synthetic_data_dir(sizes, *sides),
        ctx,
        banner(),
        source=cli.data_source("pixmo"),
        is_ready=lambda d: synthetic.read_info(d) == wanted,
        generate=lambda d: synthetic.generate(d, sizes, *sides, seed=0),
    )
    # a generated folder named directly is synthetic all the same: its predictions say so
    return path, generated or synthetic.read_info(path) is not None


def load_splits(data_dir: Path, cfg: PixmoConfig, device) -> dict[str, PixmoPointsDataset]:
    """Read and check every split (all bad-input errors happen here), then pad and resize
    each image once, on ``device``, where the uint8 images stay for the whole run."""
    limits = {"train": cfg.max_train_images, "val": cfg.max_val_images, "test": 0}
    splits = {}
    for split, limit in limits.items():
        data = load_pixmo_split(data_dir, split)
        if limit:
            data = data[:limit]
        where = str(data_dir / f"{split}_data.pkl")
        splits[split] = PixmoPointsDataset(data, split, cfg.image_size, where=where, device=device)
    return splits


def build_model(cfg: PixmoConfig, log) -> tuple[torch.nn.Module, bool]:
    """The preset's model, with ImageNet weights when available; returns (model, pretrained)."""
    common = dict(
        tokens_side=cfg.tokens_side,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        head_hidden=cfg.head_hidden,
        dropout=cfg.dropout,
        trainable_from=cfg.trainable_from,
    )
    if cfg.model == "point":
        common.update(
            fourier_bands=cfg.fourier_bands,
            crop_stream=cfg.crop_stream,
            crop_frac=cfg.crop_frac,
            crop_size=cfg.crop_size,
            local_size=cfg.local_size,
        )
    model = build_pixmo_model(cfg.model, PIXMO_NUM_CLASSES, **common)
    try:
        pretrained = load_resnet34_weights(
            model.backbone, cfg.weights or None, download=cfg.download_weights, log=log
        )
    except WeightsError as err:
        raise UserError(str(err)) from None
    return model, pretrained


class PixmoBatchSource:
    """A Trainer batch source over PixMo tensors kept on the training device.

    Yields ``(images, points, labels)``: images (B, 3, S, S) float normalised, points (B, 2)
    float pixels of the S x S image, labels (B,) int64 (-1 where unknown). No DataLoader and
    no Python per-pixel work: each step indexes the uint8 store and augments (training) and
    normalises the whole batch on the device.

    Training: each epoch has a plan (order, crop/scale/flip parameters of every example) drawn
    on the CPU from ``seed`` and the epoch number, so a resumed run sees exactly the same
    batches. The job's batch is ``batch_size`` examples; under DDP each of the ``world_size``
    ranks takes its own equal slice, and an epoch's final incomplete batch is dropped.
    Evaluation: every example exactly once, in order, in contiguous chunks across ranks.

    Args:
        images: (N, 3, S, S) uint8; points: (N, 2) float; labels: (N,) int64.
        batch_size, train, seed, rank, world_size: as above.
        augment: options for ``sample_augmentation`` (min_scale, max_aspect, flip_p, margin;
            ``{}`` for its defaults), or None to train on the stored images as they are.
        channels_last: return images in channels_last memory format (faster convs on GPUs).
        device: where the store lives (default: where ``images`` already are).
    """

    def __init__(
        self,
        images,
        points,
        labels,
        *,
        batch_size,
        train,
        seed=0,
        rank=0,
        world_size=1,
        augment=None,
        channels_last=False,
        device=None,
    ):
        if train and batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must divide among {world_size} processes")
        device = images.device if device is None else torch.device(device)
        self.images, self.points = images.to(device), points.to(device).float()
        self.labels, self.device = labels.to(device), device
        self.points_cpu = points.detach().float().cpu()  # for the per-epoch plan
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self.augment = None if augment is None else dict(augment)
        self.channels_last = channels_last

    @property
    def num_samples(self):
        return len(self.labels)

    def __len__(self):
        """Batches per epoch on this rank."""
        if self.train:
            return self.num_samples // self.batch_size
        return -(-len(self._eval_indices()) // self.batch_size)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])

    def _eval_indices(self):
        return torch.arange(self.num_samples).tensor_split(self.world_size)[self.rank]

    def epoch_plan(self, epoch):
        """Order and augmentation parameters of every example for one epoch (CPU, seeded)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        if self.augment is None:
            return {"order": order}
        size = self.images.shape[-1]
        params = sample_augmentation(self.points_cpu[order], size, generator, **self.augment)
        return {"order": order, **params}

    def _finish(self, images, points, labels):
        return normalize_pixmo(images, self.channels_last), points, labels

    def batches(self, epoch=0, start=0):
        """Yield this rank's batches of ``epoch``, starting at batch number ``start``."""
        if not self.train:
            index = self._eval_indices().to(self.device)
            for b in range(start, len(self)):
                sel = index[b * self.batch_size : (b + 1) * self.batch_size]
                yield self._finish(self.images[sel], self.points[sel], self.labels[sel])
            return
        # One host-to-device copy per epoch: no per-batch synchronisation with the GPU.
        plan = {k: v.to(self.device) for k, v in self.epoch_plan(epoch).items()}
        per_rank = self.batch_size // self.world_size
        for b in range(start, len(self)):
            low = b * self.batch_size + self.rank * per_rank
            part = slice(low, low + per_rank)
            sel = plan["order"][part]
            images, points = self.images[sel], self.points[sel]
            if self.augment is not None:
                images, points = apply_augmentation(
                    images,
                    points,
                    plan["scales"][part],
                    plan["corners"][part],
                    plan["flip"][part],
                )
            yield self._finish(images, points, self.labels[sel])

    def __iter__(self):
        return self.batches(0)


def batch_sources(splits, cfg: PixmoConfig, ctx, channels_last: bool):
    """(train, val, test) batch sources on the training device; test is whole on every rank."""
    augment = None
    if cfg.augment:
        augment = dict(min_scale=cfg.min_scale, max_aspect=cfg.max_aspect, flip_p=cfg.flip_p)
    common = dict(device=ctx.device, channels_last=channels_last)

    def source(split, **kwargs):
        data = splits[split]
        return PixmoBatchSource(data.images, data.points, data.labels, **common, **kwargs)

    train = source(
        "train",
        batch_size=cfg.batch_size,
        train=True,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        augment=augment,
    )
    val = source(
        "val", batch_size=cfg.eval_batch_size, train=False, rank=ctx.rank, world_size=ctx.world_size
    )
    test = source("test", batch_size=cfg.eval_batch_size, train=False)
    return train, val, test


def calibrate(model, train_source: PixmoBatchSource, count: int, batch_size: int) -> None:
    """BatchNorm statistics of a random trunk from the first ``count`` training images (fixed
    set, no augmentation, so a resumed run computes the same statistics)."""
    images = train_source.images[:count]
    batches = (
        normalize_pixmo(images[i : i + batch_size]) for i in range(0, len(images), batch_size)
    )
    model.backbone.calibrate_batch_norm(batches)


def synthetic_test_accuracy(data_dir: Path, preds: list[int]) -> float | None:
    """Accuracy against the generator's test_labels.txt (synthetic data only)."""
    path = data_dir / "test_labels.txt"
    if not path.is_file():
        return None
    labels = [int(v) for v in path.read_text().split()]
    if len(labels) != len(preds):
        return None
    return sum(p == t for p, t in zip(preds, labels)) / max(len(labels), 1)
