"""Question 2: fine-tune ViT-B/32 on the reduced Oxford-102 flowers.

    python demo_flower.py --exp_name vit_vpt_deep --output_dir runs/vit_vpt_deep
    python demo_flower.py --exp_name flower_smoke            # a quick CPU check of everything

The settings (``FlowerConfig``), the data folder, the batches and the model are Question 2's
recipe in ``kit/flower/recipe.py``; the presets are in config.yml (section ``flower``).

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

import torch

from custom_dataset import load_flower_splits
from kit import cli
from kit.distributed import cleanup_distributed, init_distributed, seed_everything
from kit.flower.recipe import (
    DEFAULT_DATA_DIR,
    FlowerConfig,
    banner,
    build_model,
    flower_batch_sources,
    flower_data_dir,
)
from kit.trainer import fit_and_predict


def train(cfg: FlowerConfig) -> None:
    start = time.time()
    ctx = init_distributed(cfg.device)
    try:
        out = cli.output_dir()  # checked before any slow work
        data_dir, synthetic = flower_data_dir(cfg, ctx)
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        splits = load_flower_splits(data_dir)  # every bad-input check happens here
        resolved = cli.run_settings(cfg, synthetic)
        seed_everything(cfg.seed)  # same initial prompts/head on every process
        notes = []  # messages from model building, logged once train.log exists
        model = build_model(cfg, notes.append).to(ctx.device)  # before anything is written
        seed_everything(cfg.seed + 1_000_003 * ctx.rank)  # but different dropout on each process
        log = cli.start_run(out, cfg, resolved, ctx, banner() if synthetic else None)
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

        trainer = cli.make_trainer(model, train_src, val_src, out, cfg, ctx, resolved, log)
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


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv``: run in this process and return the exit status)."""
    return cli.run_demo(
        "flower",
        FlowerConfig,
        train,
        argv=argv,
        default_preset="flower_smoke",
        data_default=DEFAULT_DATA_DIR,
        weights_what="ViT-B/32",
    )


if __name__ == "__main__":
    main()
