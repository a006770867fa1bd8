"""Question 4's recipe: the settings, data and models of a run from scratch (demo_scratch.py).

- ``ScratchConfig``: every setting of a run, the training ones (``TrainConfig``, with the
  CIFAR-10 ViT recipe as defaults) and the data, model and augmentation ones; config.yml's
  ``scratch:`` presets override them.
- ``scratch_data_dir`` / ``load_splits`` / ``load_split``: Fashion-MNIST, MNIST or CIFAR-10
  (``kit.scratch.datasets``), the validation images a fixed seeded part of the training files.
- ``batch_sources``: uint8 images on the device, crop/flip/erasing per batch.
- ``build_model`` / ``build_checked_model``: a ViT, Diff-ViT or CNN built from the student's
  layers (``kit.scratch.models``); ``load_run_model``: the same with a finished run's weights.
- ``make_loss``, ``write_summary``: label smoothing, and the run's summary.json.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from kit import cli
from kit.config import ConfigError, apply_overrides
from kit.device_batches import ErasingBatchSource, ImageBatchSource
from kit.distributed import DistContext
from kit.errors import UserError
from kit.runs import BEST_FILE, CHECKPOINT_FILE, CONFIG_FILE, atomic_write_text
from kit.scratch import datasets, synthetic_cifar
from kit.scratch.models import ScratchCNN, ScratchViT, unwritten_exercises
from kit.trainer import TrainConfig, Trainer, load_trainable_state

SYNTHETIC_CIFAR_DIR = "synthetic-data/cifar-10-batches-py"  # at the real size; smaller: -<N>


def synthetic_cifar_dir(per_file: int) -> str:
    """Where synthetic CIFAR-10 of ``per_file`` images per file is generated: one folder per
    size, so that presets of different sizes never regenerate each other's data."""
    real = per_file == synthetic_cifar.REAL_PER_FILE
    return SYNTHETIC_CIFAR_DIR if real else f"{SYNTHETIC_CIFAR_DIR}-{per_file}"


DEFAULT_DATA_DIRS = {
    "fashion_mnist": datasets.FASHION_MNIST_DIR,
    "mnist": "mnist",
    "cifar10": datasets.CIFAR10_DIR,
    "miniplaces": "data",  # where CS771's download_dataset.sh unpacks it
}
PREDICTIONS_FILE = "test_predictions.txt"
SUMMARY_FILE = "summary.json"


@dataclass
class ScratchConfig(TrainConfig):
    """Every setting of a Question 4 run: the Trainer's (TrainConfig, with the defaults below)
    and the data/model/augmentation ones; config.yml presets (section ``scratch``) override
    them. The defaults are the CIFAR-10 ViT recipe for a GPU."""

    # data
    dataset: Literal["fashion_mnist", "mnist", "cifar10", "miniplaces"] = "cifar10"
    data_dir: str = ""  # "" = the dataset's default folder (see DEFAULT_DATA_DIRS)
    val_images: int = 5000  # held out of the training files (fixed split)
    split_seed: int = 0  # the validation split's seed (independent of `seed`)
    max_train_images: int = 0  # 0 = all the rest; quick runs use fewer
    synthetic_per_file: int = 10_000  # images per file of a synthetic CIFAR-10 (real: 10000)
    # model
    model: Literal["vit", "diff_vit", "cnn"] = "vit"
    patch_size: int = 4
    depth: int = 6
    embed_dim: int = 256
    num_heads: int = 8
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    pos_embedding: Literal["none", "learned1d", "learned2d", "sinusoidal"] = "learned1d"
    pool: Literal["cls", "mean"] = "cls"  # ViT head: the CLS token, or the patch tokens' mean
    cnn_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # one per stage
    cnn_convs_per_stage: int = 2
    cnn_hidden: int = 256
    custom_conv: bool = True  # CNN: your CustomConv2d (exercise 1.9) or nn.Conv2d
    # augmentation (on the device, per batch) and loss
    augment: Literal["none", "crop_flip", "crop_flip_erase"] = "crop_flip"
    crop_padding: int = 4  # random crop of the image zero-padded by this much on each side
    flip: bool = True  # horizontal flips with crop_flip (digits: false)
    erase_prob: float = 0.25  # crop_flip_erase: chance that an image gets a random rectangle
    label_smoothing: float = 0.0
    # training: this demo's recipe (TrainConfig's keys, other defaults)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    weight_decay: float = 0.05
    scheduler: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    warmup_epochs: float = 5.0
    epochs: int = 50
    batch_size: int = 128  # images per optimiser step, over all processes
    eval_batch_size: int = 512  # per process
    # BEGIN attack section
    # adversarial training (adversarial.py): {eps, alpha, steps, eval_alpha, eval_steps,
    # eval_images}; every training batch becomes PGD examples; null = clean training
    adversarial: dict | None = None
    # END attack section


# ====================================================================== data


def scratch_data_dir(
    cfg: ScratchConfig, ctx: DistContext | None = None, data_dir: str | None = None
) -> tuple[Path, bool]:
    """The folder to read and whether it is synthetic (a missing default CIFAR-10 folder is
    replaced by generated images; a missing Fashion-MNIST is an error with the apt hint)."""
    ctx = ctx or DistContext()
    default = DEFAULT_DATA_DIRS[cfg.dataset]
    folder = data_dir or cfg.data_dir or default
    if cfg.dataset == "cifar10":
        per_file = cfg.synthetic_per_file
        wanted = synthetic_cifar.generation_info(per_file, seed=0)
        path, generated = cli.choose_data_folder(
            folder,
            default,
            synthetic_cifar_dir(per_file),
            ctx,
            synthetic_cifar.BANNER,
            is_ready=lambda d: synthetic_cifar.read_info(d) == wanted,
            generate=lambda d: synthetic_cifar.generate(d, per_file, seed=0),
        )
        # A synthetic folder named directly (e.g. the resolved path saved in a run's
        # config.yaml) is still synthetic: its README file says so.
        return path, generated or synthetic_cifar.read_info(path) is not None
    path = Path(folder)
    if not path.is_dir():
        # the reader's message says what to install or where to put the files
        datasets.load_files(cfg.dataset, path, "train")
    return path, False


def load_split(cfg: ScratchConfig, split: str, data_dir: str | None = None):
    """(images uint8 (N, C, H, W), labels int64 (N,), synthetic) of ``train``, ``val`` (the
    fixed seeded part of the training files) or ``test``."""
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split '{split}'; use train, val or test")
    folder, synthetic = scratch_data_dir(cfg, data_dir=data_dir)
    return (*load_splits(cfg, folder)[split], synthetic)


def load_splits(cfg: ScratchConfig, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read and check every file (all bad-data errors happen here); split train/val."""
    images, labels = datasets.load_files(cfg.dataset, folder, "train")
    train_idx, val_idx = datasets.split_train_val(len(labels), cfg.val_images, cfg.split_seed)
    if cfg.max_train_images:
        train_idx = train_idx[: cfg.max_train_images]
    return {
        "train": (images[train_idx], labels[train_idx]),
        "val": (images[val_idx], labels[val_idx]),
        "test": datasets.load_files(cfg.dataset, folder, "test"),
    }


def batch_sources(cfg: ScratchConfig, splits, ctx: DistContext):
    """(train, val, test) batch sources: uint8 images kept on the device, floats in [0, 1]
    per batch (the models normalise themselves); test is whole on every rank."""
    images, labels = splits["train"]
    channels, side = images.shape[1], images.shape[2]
    unit = dict(mean=(0.0,) * channels, std=(1.0,) * channels)  # x / 255: [0, 1]
    pad = cfg.crop_padding if cfg.augment != "none" else 0
    store = F.pad(images, (pad,) * 4) if pad else images  # zeros around: RandomCrop(padding)
    train = ImageBatchSource(
        store.to(ctx.device),
        labels,
        batch_size=cfg.batch_size,
        train=True,
        crop=side,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        flip=cfg.flip and cfg.augment != "none",
        **unit,
    )
    if cfg.augment == "crop_flip_erase":
        train = ErasingBatchSource(train, cfg.erase_prob)

    def evaluation(split, **kwargs):
        x, y = splits[split]
        return ImageBatchSource(
            x.to(ctx.device),
            y,
            batch_size=cfg.eval_batch_size,
            train=False,
            crop=side,
            **kwargs,
            **unit,
        )

    val = evaluation("val", rank=ctx.rank, world_size=ctx.world_size)
    return train, val, evaluation("test")


# ====================================================================== model


def build_model(
    cfg: ScratchConfig, in_channels: int, image_size: int, num_classes: int
) -> nn.Module:
    """The preset's model for images (B, in_channels, image_size, image_size) in [0, 1]."""
    mean, std = datasets.MEAN_STD[cfg.dataset]
    if cfg.model == "cnn":
        return ScratchCNN(
            image_size,
            in_channels,
            num_classes,
            channels=cfg.cnn_channels,
            convs_per_stage=cfg.cnn_convs_per_stage,
            hidden=cfg.cnn_hidden,
            dropout=cfg.dropout,
            custom_conv=cfg.custom_conv,
            mean=mean,
            std=std,
        )
    if image_size % cfg.patch_size:
        raise UserError(
            f"patch_size {cfg.patch_size} does not divide the {image_size}x{image_size} images "
            f"of {cfg.dataset}; pick a divisor of {image_size}"
        )
    heads = 2 * cfg.num_heads if cfg.model == "diff_vit" else cfg.num_heads
    if cfg.embed_dim % heads or (cfg.pos_embedding == "sinusoidal" and cfg.embed_dim % 4):
        raise UserError(
            f"embed_dim {cfg.embed_dim} must be divisible by {heads} "
            f"({'2 x ' if cfg.model == 'diff_vit' else ''}num_heads) and, with sinusoidal "
            "positions, by 4; change embed_dim or num_heads"
        )
    return ScratchViT(
        image_size,
        in_channels,
        num_classes,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        dropout=cfg.dropout,
        pos_embedding=cfg.pos_embedding,
        pool=cfg.pool,
        differential=cfg.model == "diff_vit",
        mean=mean,
        std=std,
    )


def _not_implemented(err: NotImplementedError) -> UserError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return UserError(f"the {first}")


def exercises_needed(cfg: ScratchConfig) -> list[str]:
    """The exercises of transformer_utils.py the preset's model is built from."""
    if cfg.model == "cnn":
        return ["conv2d"] if cfg.custom_conv else []
    needed = ["layer_norm", "multi_head_attention", "patch_embedding", "encoder_layer"]
    needed.append("vision_transformer")
    if cfg.pos_embedding != "none":
        needed.append("positional_encoding")
    if cfg.model == "diff_vit":
        needed.append("differential_attention")
    return needed


def build_checked_model(cfg: ScratchConfig) -> nn.Module:
    """``build_model`` for the dataset, after one forward and backward pass on two blank
    images. Every exercise the model needs that is still a stub is named, all in one line,
    before anything is read or written; any other NotImplementedError becomes one line too."""
    unwritten = unwritten_exercises(exercises_needed(cfg))
    if unwritten:
        raise UserError(
            f"this preset's {cfg.model} is built from exercises you have not written yet: "
            f"{', '.join(unwritten)}; write them in transformer_utils.py (python -m unittest "
            "test_functions -v checks them)"
        )
    channels, side = datasets.IMAGE_SHAPE[cfg.dataset]
    classes = len(datasets.CLASS_NAMES[cfg.dataset])
    try:
        model = build_model(cfg, channels, side, classes)
        model(torch.zeros(2, channels, side, side)).sum().backward()
    except NotImplementedError as err:
        raise _not_implemented(err) from None
    model.zero_grad(set_to_none=True)
    return model


def make_loss(label_smoothing: float):
    """Cross-entropy, label-smoothed in training only (validation loss stays comparable
    between presets); the Trainer evaluates under no_grad, which tells the two apart."""

    def loss(logits, labels, reduction="mean"):
        smoothing = label_smoothing if torch.is_grad_enabled() else 0.0
        return F.cross_entropy(
            logits, labels, ignore_index=-1, reduction=reduction, label_smoothing=smoothing
        )

    return loss


def load_run_model(run_dir: str | Path, which: str = "best") -> tuple[ScratchConfig, nn.Module]:
    """(config, model) of a Question 4 run, on the CPU in eval mode, with the weights of
    best.pt (``which="best"``) or checkpoint.pt (``"last"``)."""
    run_dir = Path(run_dir)
    files = {"best": BEST_FILE, "last": CHECKPOINT_FILE}
    if which not in files:
        raise UserError(f"which={which!r}; use 'best' or 'last'")
    try:
        saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict) or saved.get("model") not in ("vit", "diff_vit", "cnn"):
        raise UserError(f"{run_dir} is not a Question 4 run (no demo_scratch.py config.yaml)")
    known = {f.name for f in dataclasses.fields(ScratchConfig)}
    try:
        cfg = apply_overrides(
            ScratchConfig(), {k: v for k, v in saved.items() if k in known}, str(run_dir)
        )
    except ConfigError as err:
        raise UserError(str(err)) from None
    weights = run_dir / files[which]
    if not weights.is_file():
        raise UserError(f"{weights} does not exist yet; wait for the first epoch to finish")
    model = build_checked_model(cfg)
    state = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    load_trainable_state(model, state)
    return cfg, model.eval()


# ====================================================================== run


def write_summary(
    trainer: Trainer, result: dict, preds, test_labels, cfg, synthetic, seconds
) -> None:
    """Test accuracy in the log, TensorBoard and summary.json (written atomically)."""
    acc = (torch.tensor(preds) == test_labels).double().mean().item()
    note = " (SYNTHETIC data: not a real result)" if synthetic else ""
    trainer.log.info(
        f"test accuracy {acc:.4f} of the best-validation model (epoch {result['best_epoch']})"
        + note
    )
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(trainer.run_dir / "tensorboard") as writer:
        writer.add_scalar("test_acc", acc, result["best_epoch"])
    summary = dict(
        preset=trainer.full_config.get("exp_name"),
        dataset=cfg.dataset,
        model=cfg.model,
        synthetic=synthetic,
        best_val_acc=result["best_val_acc"],
        best_epoch=result["best_epoch"],
        test_acc=acc,
        train_seconds=round(seconds, 1),
        finished=True,
    )
    atomic_write_text(trainer.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
