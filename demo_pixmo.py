"""Question 3: classify the object under a point on PixMo images.

    python demo_pixmo.py --exp_name pixmo_demo --output_dir runs_pixmo/pixmo_demo   # the original
    python demo_pixmo.py --exp_name pixmo_point                                     # point-aware
    python demo_pixmo.py --exp_name pixmo_smoke      # a quick CPU check of everything

Flags: ``--exp_name`` (a preset of config.yml, section ``pixmo``), ``--output_dir`` (default
runs/<exp_name>), ``--data_dir`` (default pixmo_data; only when the flag is absent and that
folder is missing, a SYNTHETIC set is generated into synthetic-data/pixmo_data and the run
says so loudly),
``--weights`` (ResNet-34 ImageNet state dict; default torchvision's cache, then a download),
``--resume`` (continue checkpoint.pt). Multi-GPU: ``torchrun --nproc_per_node 4 demo_pixmo.py``.

The run directory receives config.yaml, train.log, tensorboard/, checkpoint.pt (every
epoch), best.pt (best validation accuracy) and test_pixmo.txt (predictions of best.pt, one
class per line in test-set order). Exit status: 0 done, 1 bad input (one-line message),
75 stopped by SIGTERM/SIGUSR1/Ctrl-C after writing checkpoint.pt (it prints the command to
continue, with --resume), 130 a second Ctrl-C (quit without saving).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from absl import app, flags

import demo_cli
import synthetic_pixmo
from custom_dataset import (
    PIXMO_NUM_CLASSES,
    PixmoBatchSource,
    PixmoDataError,
    PixmoPointsDataset,
    load_pixmo_split,
    normalize_pixmo,
)
from experiment_config import to_dict
from model import WeightsError, build_pixmo_model, load_resnet34_weights
from trainer import TrainConfig, fit_and_predict
from training_utils import (
    UserError,
    cleanup_distributed,
    init_distributed,
    seed_everything,
)

DEFAULT_DATA_DIR = "pixmo_data"
SYNTHETIC_DATA_DIR = "synthetic-data/pixmo_data"
FLAGS = flags.FLAGS  # declared by demo_cli.define_flags when run as a script


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
    return demo_cli.synthetic_banner(synthetic_pixmo.BANNER, "pixmo", DEFAULT_DATA_DIR)


def pixmo_data_dir(cfg: PixmoConfig, ctx) -> tuple[Path, bool]:
    """The data folder to read, and whether it is synthetic (generated here if needed)."""
    if len(cfg.synthetic_sizes) != 3:
        raise UserError("synthetic_sizes must list 3 numbers (train, val, test) in config.yml")
    sizes, sides = cfg.synthetic_sizes, (cfg.synthetic_min_side, cfg.synthetic_max_side)
    wanted = synthetic_pixmo.generation_info(sizes, *sides, seed=0)
    return demo_cli.resolve_data_dir(
        cfg.data_dir,
        DEFAULT_DATA_DIR,
        SYNTHETIC_DATA_DIR,
        ctx,
        banner(),
        source=demo_cli.data_source("pixmo"),
        is_ready=lambda d: synthetic_pixmo.read_info(d) == wanted,
        generate=lambda d: synthetic_pixmo.generate(d, sizes, *sides, seed=0),
    )


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


def train(cfg: PixmoConfig) -> None:
    start = time.time()
    ctx = init_distributed(cfg.device)
    try:
        out = demo_cli.output_dir()  # checked before any slow work
        data_dir, synthetic = pixmo_data_dir(cfg, ctx)
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        t0 = time.time()
        try:
            splits = load_splits(data_dir, cfg, ctx.device)  # every bad-data check is here
        except PixmoDataError as err:
            raise UserError(str(err)) from None
        prep_seconds = time.time() - t0
        # The model (and its weights file) before anything is written: a bad --weights file
        # must leave no run behind. Its messages go to the log once the log exists.
        seed_everything(cfg.seed)  # same initial weights on every process (and on resume)
        model_messages = []
        model, pretrained = build_model(cfg, model_messages.append)
        resolved = dict(to_dict(cfg), exp_name=FLAGS.exp_name, synthetic_data=synthetic)
        log = demo_cli.open_run(out, resolved, ctx, banner() if synthetic else None)
        sizes = ", ".join(f"{len(d)} {s}" for s, d in splits.items())
        log.info(
            f"data {data_dir}: {sizes}; padded to squares of {cfg.image_size} px once "
            f"on {ctx.device} in {prep_seconds:.1f}s"
        )

        for message in model_messages:
            log.info(message)
        model = model.to(ctx.device)
        channels_last = cfg.channels_last and ctx.device.type == "cuda"
        train_src, val_src, test_src = batch_sources(splits, cfg, ctx, channels_last)
        if not pretrained:
            calibrate(model, train_src, cfg.bn_calibration_images, cfg.eval_batch_size)
            log.info(
                f"random trunk: BatchNorm statistics set from {cfg.bn_calibration_images} "
                "training images"
            )
        if cfg.fuse_frozen_bn:
            fused = model.backbone.fuse_frozen_batch_norm()
            log.info(f"folded {fused} frozen BatchNorm layers into their convolutions")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(f"model: {cfg.model}, {n_train:,} trainable parameters")

        trainer = demo_cli.make_trainer(model, train_src, val_src, out, cfg, ctx, resolved, log)
        _, preds = fit_and_predict(
            trainer, test_src, "test_pixmo.txt", cfg.precision, synthetic=synthetic
        )
        if ctx.is_main:
            if synthetic:
                acc = synthetic_test_accuracy(data_dir, preds)
                if acc is not None:
                    log.info(
                        f"synthetic test accuracy {acc:.4f} (synthetic data: not a PixMo result)"
                    )
            log.info(f"done in {time.time() - start:.1f}s")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    demo_cli.define_flags("pixmo", "pixmo_smoke", DEFAULT_DATA_DIR, "ResNet-34")
    app.run(demo_cli.make_main("pixmo", PixmoConfig, train))
