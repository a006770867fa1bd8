"""Question 4: train your own ViT, Diff-ViT and CNN from scratch, on real images.

    python demo_scratch.py --exp_name scratch_smoke                 # a quick CPU check
    python demo_scratch.py --exp_name vit_fmnist_cpu --output_dir runs_scratch/vit_fmnist_cpu
    python demo_scratch.py --exp_name vit_cifar10 --data_dir cifar-10-batches-py   # on a GPU

The models are built from YOUR layers in transformer_utils.py (see kit/scratch/models.py): an
exercise you have not written yet stops the demo with "... not implemented yet (exercise
1.x)" before anything is written. The settings (``ScratchConfig``), the data, the batches and
the model builders are Question 4's recipe in ``kit/scratch/recipe.py``; the presets are in
config.yml (section ``scratch``).

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
import time

from kit import cli
from kit.distributed import cleanup_distributed, init_distributed, seed_everything
from kit.scratch import synthetic_cifar
from kit.scratch.recipe import (
    PREDICTIONS_FILE,
    ScratchConfig,
    batch_sources,
    build_checked_model,
    load_splits,
    make_loss,
    scratch_data_dir,
    write_summary,
)
from kit.trainer import fit_and_predict


# BEGIN attack section
def adversarial_settings(value):
    """The preset's ``adversarial:`` settings, checked (None: clean training). Adversarial
    training comes with the attack (adversarial.py, kit/attack.py): a course without it
    says so in one line."""
    from kit.errors import UserError

    if value is None:
        return None
    try:
        from kit.attack import adversarial_config
    except ModuleNotFoundError:
        raise UserError(
            "this preset trains adversarially, but this kit has no attack (adversarial.py); "
            "remove its 'adversarial:' key or ask your course staff"
        ) from None
    return adversarial_config(value)


# END attack section
def train(cfg: ScratchConfig) -> None:
    start = time.time()
    # BEGIN attack section
    adv = adversarial_settings(cfg.adversarial)  # a bad setting: one line, now
    # END attack section
    ctx = init_distributed(cfg.device)
    try:
        out = cli.output_dir()  # checked before any slow work
        seed_everything(cfg.seed)  # same initial weights on every process (and on resume)
        model = build_checked_model(cfg)  # unwritten exercises stop here, before any data
        data_dir, synthetic = scratch_data_dir(cfg, ctx)
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        t0 = time.time()
        splits = load_splits(cfg, data_dir)  # every bad-data check happens here
        seed_everything(cfg.seed + 1_000_003 * ctx.rank)  # but different dropout per process
        resolved = cli.run_settings(cfg, synthetic)
        banner = synthetic_cifar.BANNER if synthetic else None
        log = cli.start_run(out, cfg, resolved, ctx, banner)
        sizes = ", ".join(f"{len(y)} {s}" for s, (_, y) in splits.items())
        log.info(f"data {data_dir} ({cfg.dataset}): {sizes}; read in {time.time() - t0:.1f}s")
        model = model.to(ctx.device)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(f"model: {cfg.model}, {n_train:,} trainable parameters")
        train_src, val_src, test_src = batch_sources(cfg, splits, ctx)
        robust_val = None
        # BEGIN attack section
        if adv is not None:  # Madry et al.: train on PGD examples, log val_robust_acc
            from adversarial import pgd_attack  # your attack (adversarial.py)
            from kit.attack import AdversarialBatches, RobustValidation

            train_src = AdversarialBatches(
                train_src, model, pgd_attack, adv.eps, adv.alpha, adv.steps, precision=cfg.precision
            )
            robust_val = RobustValidation(model, val_src, pgd_attack, adv, cfg.precision)
        # END attack section
        trainer = cli.make_trainer(
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
            write_summary(trainer, result, preds, splits["test"][1], cfg, synthetic, seconds)
            log.info(f"done in {time.time() - start:.1f}s")
    finally:
        cleanup_distributed()


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv``: run in this process and return the exit status)."""
    return cli.run_demo(
        "scratch",
        ScratchConfig,
        train,
        argv=argv,
        default_preset="scratch_smoke",
        data_default="the dataset's folder",
    )


if __name__ == "__main__":
    main()
