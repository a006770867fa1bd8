"""Question 3: classify the object under a point on PixMo images.

    python demo_pixmo.py --exp_name pixmo_demo --output_dir runs_pixmo/pixmo_demo   # the original
    python demo_pixmo.py --exp_name pixmo_point                                     # point-aware
    python demo_pixmo.py --exp_name pixmo_smoke      # a quick CPU check of everything

The settings (``PixmoConfig``), the data, the batches and the model builder are Question 3's
recipe in ``kit/pixmo/recipe.py`` (the models themselves are in model.py); the presets are in
config.yml (section ``pixmo``).

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

import torch

from custom_dataset import PixmoDataError
from kit import cli
from kit.distributed import cleanup_distributed, init_distributed, seed_everything
from kit.errors import UserError
from kit.pixmo.recipe import (
    DEFAULT_DATA_DIR,
    PixmoConfig,
    banner,
    batch_sources,
    build_model,
    calibrate,
    load_splits,
    pixmo_data_dir,
    synthetic_test_accuracy,
)
from kit.trainer import fit_and_predict


def train(cfg: PixmoConfig) -> None:
    start = time.time()
    ctx = init_distributed(cfg.device)
    try:
        out = cli.output_dir()  # checked before any slow work
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
        resolved = cli.run_settings(cfg, synthetic)
        log = cli.start_run(out, cfg, resolved, ctx, banner() if synthetic else None)
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

        trainer = cli.make_trainer(model, train_src, val_src, out, cfg, ctx, resolved, log)
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


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv``: run in this process and return the exit status)."""
    return cli.run_demo(
        "pixmo",
        PixmoConfig,
        train,
        argv=argv,
        default_preset="pixmo_smoke",
        data_default=DEFAULT_DATA_DIR,
        weights_what="ResNet-34",
    )


if __name__ == "__main__":
    main()
