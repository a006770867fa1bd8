"""Question 2: fine-tune ViT-B/32 on the reduced Oxford-102 flowers.

    python demo_flower.py --exp_name vit_vpt_deep --output_dir runs/vit_vpt_deep
    python demo_flower.py --exp_name flower_smoke            # a quick CPU check of everything

Flags: ``--exp_name`` (a preset of config.yml), ``--output_dir`` (default runs/<exp_name>),
``--data_dir`` (default flower-dataset-reduced; only when the flag is absent and that folder
is missing, SYNTHETIC flowers are generated into synthetic-data/ and the run says so),
``--weights`` (ViT-B/32 ImageNet weights; default torchvision's cache, then a download),
``--resume`` (continue the run in --output_dir), ``--config`` (another presets file, e.g.
for tests; default config.yml).
Multi-GPU: ``torchrun --nproc_per_node 4 demo_flower.py ...`` (or one srun task per GPU).

The run directory receives config.yaml, train.log, tensorboard/, checkpoint.pt (every
epoch), best.pt (best validation accuracy) and test_flower.txt (predictions of best.pt).
Exit status: 0 done, 1 bad input (one-line message), 75 stopped by SIGTERM/SIGUSR1/Ctrl-C
after writing checkpoint.pt (it prints the command to continue, with --resume; the sbatch
scripts requeue on 75), 130 a second Ctrl-C (quit without saving).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from absl import app, flags

import demo_cli
import synthetic_flowers
from custom_dataset import (
    FLOWER_CLASSES,
    FLOWER_SPLITS,
    flower_batch_sources,
    flower_split_path,
    load_flower_splits,
)
from experiment_config import to_dict
from fine_tune import ViTLinear, ViTPrompt
from trainer import TrainConfig, fit_and_predict
from training_utils import (
    UserError,
    cleanup_distributed,
    init_distributed,
    seed_everything,
)

DEFAULT_DATA_DIR = "flower-dataset-reduced"
SYNTHETIC_DATA_DIR = "synthetic-data/flower-dataset-reduced"
FLAGS = flags.FLAGS  # declared by demo_cli.define_flags when run as a script


@dataclass
class FlowerConfig(TrainConfig):
    """Every setting of a flower run: the training settings (TrainConfig, whose defaults are
    the original handout's SGD recipe) and the model and data ones below; config.yml presets
    override any of them."""

    # model
    encoder_name: Literal["vit_b_32", "vit_tiny_test"] = "vit_b_32"
    method: Literal["linear", "vpt", "full"] = "linear"  # linear probe / prompts / everything
    num_prompts: int = 10
    deep_prompts: bool = True  # VPT-Deep (every layer) or VPT-Shallow (first layer)
    prompt_dropout: float = 0.0
    weights: str = ""  # ViT-B/32 weights file; "" = torchvision IMAGENET1K_V1 (cache/download)
    # data
    data_dir: str = DEFAULT_DATA_DIR
    image_size: int = 224
    resize_size: int = 256
    max_train_images: int = 0  # 0 = all; smoke runs use fewer
    max_val_images: int = 0
    channels_last: bool = True  # on CUDA only
    # training: TrainConfig's defaults, but for the handout's SGD momentum
    momentum: float = 0.99


def banner() -> str:
    """The synthetic-data warning, with where the real data comes from."""
    return demo_cli.synthetic_banner(synthetic_flowers.BANNER, "flowers", DEFAULT_DATA_DIR)


def flower_data_dir(cfg: FlowerConfig, ctx) -> tuple[Path, bool]:
    """The data folder to read, and whether it is synthetic (generated here if needed)."""
    return demo_cli.resolve_data_dir(
        cfg.data_dir,
        DEFAULT_DATA_DIR,
        SYNTHETIC_DATA_DIR,
        ctx,
        banner(),
        source=demo_cli.data_source("flowers"),
        is_ready=lambda d: all(flower_split_path(d, s).is_file() for s in FLOWER_SPLITS),
        generate=lambda d: synthetic_flowers.generate(d, seed=0),
    )


def build_model(cfg: FlowerConfig, log) -> torch.nn.Module:
    weights = cfg.weights or "IMAGENET1K_V1"
    common = dict(
        encoder_name=cfg.encoder_name, weights=weights, image_size=cfg.image_size, log=log
    )
    try:
        if cfg.method == "vpt":
            return ViTPrompt(
                FLOWER_CLASSES,
                num_prompts=cfg.num_prompts,
                deep=cfg.deep_prompts,
                prompt_dropout=cfg.prompt_dropout,
                **common,
            )
        return ViTLinear(FLOWER_CLASSES, train_backbone=cfg.method == "full", **common)
    except Exception as err:  # a bad weights file fails in many ways; all mean the same
        if not cfg.weights:
            raise
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--weights {cfg.weights} is not a ViT-B/32 state dict with torchvision's names "
            f"({reason}); pass torchvision's vit_b_32-d86f8d99.pth"
        ) from None


def train(cfg: FlowerConfig) -> None:
    start = time.time()
    ctx = init_distributed(cfg.device)
    try:
        out = demo_cli.output_dir()  # checked before any slow work
        data_dir, synthetic = flower_data_dir(cfg, ctx)
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        splits = load_flower_splits(data_dir)  # every bad-input check happens here
        resolved = dict(to_dict(cfg), exp_name=FLAGS.exp_name, synthetic_data=synthetic)
        seed_everything(cfg.seed)  # same initial prompts/head on every process
        notes = []  # messages from model building, logged once train.log exists
        model = build_model(cfg, notes.append).to(ctx.device)  # before anything is written
        seed_everything(cfg.seed + 1_000_003 * ctx.rank)  # but different dropout on each process
        log = demo_cli.open_run(out, resolved, ctx, banner() if synthetic else None)
        for note in notes:
            log.warning(note)
        channels_last = cfg.channels_last and ctx.device.type == "cuda"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(f"model: {cfg.method} on {cfg.encoder_name}, {n_train:,} trainable parameters")

        t0 = time.time()
        train_src, val_src, test_src = flower_batch_sources(
            splits,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
            image_size=cfg.image_size,
            resize_size=cfg.resize_size,
            max_train_images=cfg.max_train_images,
            max_val_images=cfg.max_val_images,
            seed=cfg.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            device=ctx.device,
            channels_last=channels_last,
            log=log.info,
        )
        log.info(
            f"images resized once and stored as uint8 on {ctx.device} in {time.time() - t0:.1f}s"
        )

        trainer = demo_cli.make_trainer(model, train_src, val_src, out, cfg, ctx, resolved, log)
        _, preds = fit_and_predict(
            trainer, test_src, "test_flower.txt", cfg.precision, synthetic=synthetic
        )
        if ctx.is_main:
            if synthetic:
                labels = test_src.labels.cpu()
                acc = (torch.tensor(preds) == labels).double().mean().item()
                log.info(f"synthetic test accuracy {acc:.4f} (synthetic data: not a real result)")
            log.info(f"done in {time.time() - start:.1f}s")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    demo_cli.define_flags("flower", "flower_smoke", DEFAULT_DATA_DIR, "ViT-B/32")
    app.run(demo_cli.make_main("flower", FlowerConfig, train))
