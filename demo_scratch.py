"""Question 4: train your own ViT, Diff-ViT and CNN from scratch, on real images.

    python demo_scratch.py --exp_name scratch_smoke                 # a quick CPU check
    python demo_scratch.py --exp_name vit_fmnist_cpu --output_dir runs_scratch/vit_fmnist_cpu
    python demo_scratch.py --exp_name vit_cifar10 --data_dir cifar-10-batches-py   # on a GPU

The models are built from YOUR layers in transformer_utils.py (see scratch_models.py): an
exercise you have not written yet stops the demo with "... not implemented yet (exercise
1.x)" before anything is written.

Flags: ``--exp_name`` (a preset of config.yml, section ``scratch``), ``--output_dir``
(default runs/<exp_name>), ``--data_dir`` (default: /usr/share/datasets/fashion-mnist for
fashion_mnist, ``mnist`` for mnist, ``cifar-10-batches-py`` for cifar10; when that default
CIFAR-10 folder is missing a SYNTHETIC set in the real format is generated into
synthetic-data/cifar-10-batches-py and the run says so loudly), ``--resume``, ``--config``.
Multi-GPU: ``torchrun --nproc_per_node 4 demo_scratch.py ...``.

The run directory receives config.yaml, train.log, tensorboard/ (lr, train_loss, train_acc,
val_loss, val_acc per epoch; test_acc once, at the best epoch), checkpoint.pt, best.pt,
test_predictions.txt (the best-validation model's class for every test image, in order) and
summary.json. The validation images are a fixed, seeded part of the training files; the
test set is used once, at the end. Exit status: 0 done, 1 bad input (one-line message), 75
preempted by SIGTERM/SIGUSR1 after writing checkpoint.pt (rerun with --resume).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import yaml
from absl import app, flags
from torch import nn

import adversarial
import demo_cli
import scratch_data
import synthetic_cifar
from experiment_config import ConfigError, apply_overrides, to_dict
from gpu_transforms import ImageBatchSource
from scratch_models import ScratchCNN, ScratchViT
from trainer import TrainConfig, Trainer, WrappedBatchSource, fit_and_predict, load_trainable_state
from training_utils import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DistContext,
    UserError,
    atomic_write_text,
    cleanup_distributed,
    init_distributed,
    seed_everything,
)

SYNTHETIC_CIFAR_DIR = "synthetic-data/cifar-10-batches-py"
DEFAULT_DATA_DIRS = {
    "fashion_mnist": scratch_data.FASHION_MNIST_DIR,
    "mnist": "mnist",
    "cifar10": scratch_data.CIFAR10_DIR,
}
PREDICTIONS_FILE = "test_predictions.txt"
SUMMARY_FILE = "summary.json"
FLAGS = flags.FLAGS  # declared by demo_cli.define_flags when run as a script


@dataclass
class ScratchConfig(TrainConfig):
    """Every setting of a Question 4 run: the Trainer's (TrainConfig, with the defaults below)
    and the data/model/augmentation ones; config.yml presets (section ``scratch``) override
    them. The defaults are the CIFAR-10 ViT recipe for a GPU."""

    # data
    dataset: Literal["fashion_mnist", "mnist", "cifar10"] = "cifar10"
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
    # adversarial training (adversarial.py): {eps, alpha, steps, eval_alpha, eval_steps,
    # eval_images}; every training batch becomes PGD examples; null = clean training
    adversarial: dict | None = None


# ====================================================================== data


def resolve_data_dir(
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
        path, generated = demo_cli.resolve_data_dir(
            folder,
            default,
            SYNTHETIC_CIFAR_DIR,
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
        scratch_data.load_idx_split(path, "train", cfg.dataset)
    return path, False


def load_split(cfg: ScratchConfig, split: str, data_dir: str | None = None):
    """(images uint8 (N, C, H, W), labels int64 (N,), synthetic) of ``train``, ``val`` (the
    fixed seeded part of the training files) or ``test``."""
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split '{split}'; use train, val or test")
    folder, synthetic = resolve_data_dir(cfg, data_dir=data_dir)
    return (*load_splits(cfg, folder)[split], synthetic)


def load_splits(cfg: ScratchConfig, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read and check every file (all bad-data errors happen here); split train/val."""
    images, labels = scratch_data.load_files(cfg.dataset, folder, "train")
    train_idx, val_idx = scratch_data.split_train_val(len(labels), cfg.val_images, cfg.split_seed)
    if cfg.max_train_images:
        train_idx = train_idx[: cfg.max_train_images]
    return {
        "train": (images[train_idx], labels[train_idx]),
        "val": (images[val_idx], labels[val_idx]),
        "test": scratch_data.load_files(cfg.dataset, folder, "test"),
    }


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
    mean, std = scratch_data.MEAN_STD[cfg.dataset]
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
        differential=cfg.model == "diff_vit",
        mean=mean,
        std=std,
    )


def _not_implemented(err: NotImplementedError) -> UserError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return UserError(f"the {first}")


def build_checked_model(cfg: ScratchConfig) -> nn.Module:
    """``build_model`` for the dataset, after one forward and backward pass on two blank
    images: a stubbed exercise (NotImplementedError) becomes one line naming it, before
    anything is written."""
    channels, side = scratch_data.IMAGE_SHAPE[cfg.dataset]
    classes = len(scratch_data.CLASS_NAMES[cfg.dataset])
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


def finish(trainer: Trainer, result: dict, preds, test_labels, cfg, synthetic, seconds) -> None:
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
        preset=FLAGS.exp_name,
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


def train(cfg: ScratchConfig) -> None:
    start = time.time()
    adv = adversarial.adversarial_config(cfg.adversarial)  # a bad setting: one line, now
    ctx = init_distributed(cfg.device)
    try:
        out = demo_cli.output_dir()  # checked before any slow work
        data_dir, synthetic = resolve_data_dir(cfg, ctx)
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        t0 = time.time()
        splits = load_splits(cfg, data_dir)  # every bad-data check happens here
        seed_everything(cfg.seed)  # same initial weights on every process (and on resume)
        model = build_checked_model(cfg)  # a stubbed exercise stops here, nothing written
        seed_everything(cfg.seed + 1_000_003 * ctx.rank)  # but different dropout per process
        resolved = dict(to_dict(cfg), exp_name=FLAGS.exp_name, synthetic_data=synthetic)
        banner = synthetic_cifar.BANNER if synthetic else None
        log = demo_cli.open_run(out, resolved, ctx, banner)
        sizes = ", ".join(f"{len(y)} {s}" for s, (_, y) in splits.items())
        log.info(f"data {data_dir} ({cfg.dataset}): {sizes}; read in {time.time() - t0:.1f}s")
        model = model.to(ctx.device)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(f"model: {cfg.model}, {n_train:,} trainable parameters")
        train_src, val_src, test_src = batch_sources(cfg, splits, ctx)
        robust_val = None
        if adv is not None:  # Madry et al.: train on PGD examples, log val_robust_acc
            train_src = adversarial.AdversarialBatches(
                train_src, model, adv.eps, adv.alpha, adv.steps, precision=cfg.precision
            )
            robust_val = adversarial.RobustValidation(model, val_src, adv, cfg.precision)
        trainer = demo_cli.make_trainer(
            model,
            train_src,
            val_src,
            out,
            cfg,
            ctx,
            resolved,
            log,
            loss_fn=make_loss(cfg.label_smoothing),
            on_step_end=robust_val,
        )
        t_fit = time.time()
        try:
            result, preds = fit_and_predict(trainer, test_src, PREDICTIONS_FILE, cfg.precision)
        finally:
            if robust_val is not None:
                robust_val.close()
        if ctx.is_main:
            seconds = time.time() - t_fit
            finish(trainer, result, preds, splits["test"][1], cfg, synthetic, seconds)
            log.info(f"done in {time.time() - start:.1f}s")
    finally:
        cleanup_distributed()


def main(argv: list[str]) -> None:
    if FLAGS.weights is not None:  # the shared flag set has it; models here start from scratch
        raise SystemExit(
            "error: --weights is not used by demo_scratch.py (models train from scratch); drop it"
        )
    demo_cli.make_main("scratch", ScratchConfig, train)(argv)


if __name__ == "__main__":
    demo_cli.define_flags("scratch", "scratch_smoke", "the dataset's folder", "(unused)")
    app.run(main)
