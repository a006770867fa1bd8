"""Adversarial examples and adversarial training: everything around ``pgd_attack``.

The attack itself is Question 4's exercise, ``adversarial.pgd_attack``; whatever here
attacks takes it as its ``attack`` argument (a function with pgd_attack's signature), so
that the student's own attack is the one that runs.

- ``check_attack_args`` / ``round_into_ball``: the checks and the final rounding that
  ``pgd_attack`` calls first and last.
- ``AdversarialBatches``: a Trainer batch source whose batches are attacked with the current
  model (Madry et al.'s adversarial training); ``AdversarialConfig`` / ``adversarial_config``:
  a preset's ``adversarial:`` key; ``RobustValidation``: ``val_robust_acc`` every epoch.
- ``attack_source`` / ``robust_accuracy``: clean and attacked accuracy over a batch source.
- ``run_attack``: what ``python adversarial.py --run RUN`` does on a finished Question 4 run
  (``adversarial.json``, the example grid and the eps sweep).

Every model here takes FLOAT images in [0, 1] of shape (B, C, H, W) and normalises them
itself, so that ``eps`` is measured in pixel units (eps 0.1 = about 25 grey levels of 255).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from kit.config import ConfigError, apply_overrides
from kit.device_batches import TensorBatches, WrappedBatchSource
from kit.distributed import select_device
from kit.errors import UserError
from kit.finished_runs import (
    TrainedModel,
    load_trained_model,
    read_run,
    scratch_recipe,
    test_images,
)
from kit.runs import atomic_write_bytes, atomic_write_text
from kit.trainer import use_bf16

RESULT_FILE = "adversarial.json"
EXAMPLES_FILE = "adversarial_examples.png"
SWEEP_FILE = "adversarial_sweep.png"
# pgd_attack(model, images, labels, eps, alpha, steps, random_start, targeted) -> images
Attack = Callable[..., torch.Tensor]


# ====================================================================== checks


def check_attack_args(images, labels, eps, alpha, steps):
    """Catch the usual misuses with a message that says what to pass instead."""
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        dtype = f" {images.dtype}" if torch.is_tensor(images) else ""
        raise ValueError(f"images must be a float tensor (B, C, H, W) in [0, 1], got {got}{dtype}")
    if not torch.is_tensor(labels) or labels.shape != images.shape[:1]:
        got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape ({images.shape[0]},), got {got}")
    if not (isinstance(eps, (int, float)) and 0.0 <= eps <= 1.0):
        raise ValueError(f"eps must be a number in [0, 1] (pixel units), got {eps!r}")
    if not (isinstance(alpha, (int, float)) and alpha >= 0.0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if images.numel():
        lo, hi = images.min().item(), images.max().item()
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; pass raw pixels "
                "(/255) and let the model normalise them"
            )


def round_into_ball(adv, x0, eps):
    """``adv`` (float32) in the dtype of ``x0``, with every value that rounding left outside
    the eps-ball (float32 0.3 + 0.1 is 0.4000000059 away; bfloat16 keeps only 8 bits) put on
    the ball's wall, rounded towards ``x0``. The wall lies between ``x0`` and ``adv``, so it is
    in [0, 1] when both are."""
    out = adv.to(x0.dtype)
    delta = out.double() - x0.double()
    outside = delta.abs() > eps
    if outside.any():
        wall = (x0.double() + delta.sign() * eps).to(x0.dtype)  # nearest: maybe just outside
        over = (wall.double() - x0.double()).abs() > eps
        wall = torch.where(over, torch.nextafter(wall, x0), wall)  # the neighbour is inside
        out = torch.where(outside, wall, out)
    return out


# ====================================================================== training and evaluation


def _attack_batch(
    attack, model, images, labels, eps, alpha, steps, random_start, targeted, precision
):
    """``attack`` (pgd_attack) under the same autocast as training (bf16 on CUDA by default),
    the model in eval mode."""
    was_training = model.training
    model.eval()  # the attack must not update BatchNorm statistics or drop units
    try:
        bf16 = use_bf16(precision, images.device)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            return attack(model, images, labels, eps, alpha, steps, random_start, targeted)
    finally:
        model.train(was_training)


class AdversarialBatches(WrappedBatchSource):
    """A Trainer batch source whose batches are PGD examples made with the current model.

    Adversarial training (Madry et al., 2018) minimises the loss on the worst images of the
    eps-ball instead of the clean ones. Wrap the training source and train as usual::

        train_src = AdversarialBatches(train_src, model, pgd_attack, eps=0.1, alpha=0.01, steps=7)

    ``source`` must yield ``(images, labels)`` with float images in [0, 1] (B, C, H, W) on
    the model's device. Each batch is attacked with ``model`` switched to eval mode (so that
    the attack's forward passes neither update BatchNorm statistics nor drop units), then
    the mode is restored. ``model`` is the plain module, not its DDP or compiled wrapper.
    The random starts use torch's global generator, which the Trainer checkpoints, so a
    resumed run sees the same batches. The Trainer's ``train_acc`` is then accuracy on the
    attacked training images.
    """

    def __init__(
        self,
        source,
        model: nn.Module,
        attack: Attack,
        eps: float,
        alpha: float,
        steps: int,
        random_start: bool = True,
        precision: str = "auto",
    ):
        check_attack_args(torch.zeros(1, 1, 1, 1), torch.zeros(1), eps, alpha, steps)
        use_bf16(precision, torch.device("cpu"))  # reject a bad value now, not mid-epoch
        super().__init__(source)
        self.model, self.attack = model, attack
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.random_start, self.precision = random_start, precision

    def batches(self, epoch: int = 0, start: int = 0):
        for batch in self.source.batches(epoch, start):
            *inputs, labels = batch
            if len(inputs) != 1:
                raise ValueError(
                    f"AdversarialBatches attacks sources of (images, labels); this one yields "
                    f"{len(inputs)} inputs per batch"
                )
            adv = _attack_batch(
                self.attack,
                self.model,
                inputs[0],
                labels,
                self.eps,
                self.alpha,
                self.steps,
                self.random_start,
                False,
                self.precision,
            )
            yield adv, labels


@dataclasses.dataclass
class AttackResult:
    """Counts of one attacked pass over a source (summed over all processes)."""

    count: int = 0
    clean_correct: int = 0
    robust_correct: int = 0
    target_hits: int = 0  # targeted attacks: adversarial prediction == target class
    examples: dict | None = None  # the first images: clean, adv, labels, both predictions

    @property
    def clean_acc(self) -> float:
        return self.clean_correct / max(self.count, 1)

    @property
    def robust_acc(self) -> float:
        return self.robust_correct / max(self.count, 1)

    @property
    def target_rate(self) -> float:
        return self.target_hits / max(self.count, 1)


# The classes a targeted attack aims at: the next one, or the one the model finds least
# likely on the clean image (CS771 HW2's choice).
TARGETS = {
    "next": "(label + 1) % num_classes",
    "least_likely": "the class with the lowest clean logit",
}


def attack_targets(target: str, clean_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) classes to aim at: ``next`` -> (label + 1) % K; ``least_likely`` -> argmin of the
    clean logits (B, K) (never the label itself: with K >= 2 the argmin is another class
    unless every logit ties)."""
    if target == "next":
        return (labels + 1) % clean_logits.shape[1]
    if target == "least_likely":
        return clean_logits.argmin(dim=1)
    raise ValueError(f"target {target!r} is unknown; use one of {', '.join(TARGETS)}")


def attack_source(
    model,
    source,
    attack: Attack,
    eps,
    alpha,
    steps,
    *,
    random_start=True,
    targeted=False,
    target="next",
    precision="auto",
    keep=0,
    progress=None,
    limit=None,
    on_batch=None,
) -> AttackResult:
    """Attack every labelled image of ``source`` (yielding ``(images in [0, 1], labels)``)
    with ``attack`` (``adversarial.pgd_attack``'s signature).

    Targeted attacks aim at ``target`` (see ``TARGETS``). ``keep`` first images are returned
    for pictures (CPU tensors); ``progress`` is an optional tqdm bar to advance; ``limit``
    stops after the batch that reaches that many images (on this process);
    ``on_batch(index, clean, adv)`` sees every batch's images (e.g. to log them).
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    kept = {k: [] for k in ("clean", "adv", "labels", "clean_pred", "adv_pred")}
    try:
        for batch_index, (*inputs, labels) in enumerate(source.batches(0)):
            images = inputs[0]
            bf16 = use_bf16(precision, images.device)
            known = labels >= 0
            with torch.no_grad(), torch.autocast(images.device.type, torch.bfloat16, enabled=bf16):
                clean_logits = model(images).float()
            aim = attack_targets(target, clean_logits, labels) if targeted else labels
            aim = torch.where(known, aim, labels)
            adv = _attack_batch(
                attack, model, images, aim, eps, alpha, steps, random_start, targeted, precision
            )
            with torch.no_grad(), torch.autocast(images.device.type, torch.bfloat16, enabled=bf16):
                adv_pred = model(adv).float().argmax(1)
            clean_pred = clean_logits.argmax(1)
            totals += (
                torch.stack(
                    [
                        known.sum(),
                        ((clean_pred == labels) & known).sum(),
                        ((adv_pred == labels) & known).sum(),
                        ((adv_pred == aim) & known).sum() if targeted else known.sum() * 0,
                    ]
                )
                .double()
                .cpu()
            )
            have = len(torch.cat(kept["labels"])) if kept["labels"] else 0
            if have < keep:
                take = slice(0, keep - have)
                for k, v in zip(kept, (images, adv, labels, clean_pred, adv_pred)):
                    kept[k].append(
                        v[take].detach().float().cpu() if k in ("clean", "adv") else v[take].cpu()
                    )
            if on_batch is not None:
                on_batch(batch_index, images, adv)
            if progress is not None:
                progress.update(len(labels))
            if limit is not None and totals[0] >= limit:
                break
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        totals = totals.to(next(model.parameters()).device)
        dist.all_reduce(totals)
    count, clean, robust, hits = (int(round(v)) for v in totals.tolist())
    examples = {k: torch.cat(v) for k, v in kept.items()} if keep and kept["labels"] else None
    return AttackResult(count, clean, robust, hits, examples)


def robust_accuracy(
    model,
    source,
    attack: Attack,
    eps,
    alpha,
    steps,
    random_start=True,
    precision="auto",
    limit=None,
) -> tuple[float, float]:
    """``(clean accuracy, accuracy under the untargeted PGD attack)`` over ``source``.

    For logging a validation set during (adversarial) training: ``source`` yields
    ``(images in [0, 1], labels)``; the model's mode is restored afterwards. ``limit``:
    about that many images only (whole batches)."""
    r = attack_source(
        model,
        source,
        attack,
        eps,
        alpha,
        steps,
        random_start=random_start,
        precision=precision,
        limit=limit,
    )
    return r.clean_acc, r.robust_acc


# ====================================================================== in a training demo


@dataclasses.dataclass
class AdversarialConfig:
    """The ``adversarial:`` key of a Question 4 preset; ``null`` (the default) trains on
    clean images. Training batches are PGD-``steps`` examples (step ``alpha``) in the
    ``eps``-ball; every epoch ``eval_images`` validation images are attacked with
    PGD-``eval_steps`` (step ``eval_alpha``) for ``val_robust_acc``."""

    eps: float = 0.1
    alpha: float = 0.025
    steps: int = 7
    eval_alpha: float = 0.01
    eval_steps: int = 20
    eval_images: int = 1000


def adversarial_config(value) -> AdversarialConfig | None:
    """``None`` or the checked settings of a preset's ``adversarial:`` mapping; a bad key or
    value raises ``UserError`` with one line."""
    if value is None:
        return None
    where = "the preset's 'adversarial:' settings"
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping such as {{eps: 0.1, alpha: 0.025, steps: 7}}")
    try:
        adv = apply_overrides(AdversarialConfig(), value, where=where)
    except ConfigError as err:
        raise UserError(str(err)) from None
    if not 0.0 < adv.eps <= 1.0:
        raise UserError(f"eps {adv.eps} in {where} must be in (0, 1] (pixel units)")
    for name in ("alpha", "eval_alpha"):
        if not 0.0 < getattr(adv, name) <= 1.0:
            raise UserError(f"{name} {getattr(adv, name)} in {where} must be in (0, 1]")
    for name in ("steps", "eval_steps", "eval_images"):
        if getattr(adv, name) < 1:
            raise UserError(f"{name} {getattr(adv, name)} in {where} must be at least 1")
    return adv


class RobustValidation:
    """A Trainer ``on_step_end`` callback: after the last step of every epoch, the accuracy
    of the first ``settings.eval_images`` validation images, clean and under PGD, goes to
    the log and to TensorBoard (``val_robust_acc``, ``val_robust_clean_acc``, at step =
    epoch, as the Trainer's own scalars). It runs on every process (the counts are summed)
    and leaves the random streams of training untouched. Call ``close()`` after training."""

    def __init__(
        self, model, val_source, attack: Attack, settings: AdversarialConfig, precision="auto"
    ):
        self.model, self.source, self.settings = model, val_source, settings
        self.attack = attack
        self.precision = precision
        self.history: dict[int, tuple[float, float]] = {}  # epoch -> (clean, robust)
        self._writer = None

    def __call__(self, trainer, epoch: int, step: int) -> None:
        if step + 1 != len(trainer.train_source):
            return
        s = self.settings
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            r = attack_source(
                self.model,
                self.source,
                self.attack,
                s.eps,
                s.eval_alpha,
                s.eval_steps,
                precision=self.precision,
                limit=-(-s.eval_images // trainer.ctx.world_size),  # per process
            )
        clean, robust = r.clean_acc, r.robust_acc
        self.history[epoch + 1] = (clean, robust)
        trainer.log.info(
            f"epoch {epoch + 1}: PGD-{s.eval_steps} eps {s.eps} on {r.count} validation "
            f"images: clean {clean:.4f}, under attack {robust:.4f}"
        )
        if trainer.ctx.is_main:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(trainer.run_dir / "tensorboard")
            self._writer.add_scalar("val_robust_acc", robust, epoch + 1)
            self._writer.add_scalar("val_robust_clean_acc", clean, epoch + 1)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ====================================================================== pictures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _show(ax, image):
    """Show a (C, H, W) float image in [0, 1]."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def examples_figure(examples, class_names, eps, title) -> bytes:
    """PNG: one row per image: clean, perturbation (magnified to the full grey range), adversarial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def name(i):
        i = int(i)
        return class_names[i] if class_names and 0 <= i < len(class_names) else str(i)

    n = len(examples["labels"])
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 3.0 * n), squeeze=False, layout="constrained")
    for row in range(n):
        clean, adv = examples["clean"][row], examples["adv"][row]
        label = int(examples["labels"][row])
        cp, ap = int(examples["clean_pred"][row]), int(examples["adv_pred"][row])
        scale = 2 * eps if eps > 0 else 1.0
        _show(axes[row, 0], clean)
        axes[row, 0].set_title(
            f"clean: {name(cp)}\n(true: {name(label)})", color="black" if cp == label else "red"
        )
        _show(axes[row, 1], ((adv - clean) / scale + 0.5).clamp(0, 1))
        axes[row, 1].set_title(f"perturbation x{1 / scale:.1f}\n(grey = 0)")
        _show(axes[row, 2], adv)
        axes[row, 2].set_title(f"adversarial: {name(ap)}", color="black" if ap == label else "red")
    fig.suptitle(title)
    data = _png(fig)
    plt.close(fig)
    return data


def sweep_figure(rows, title) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([r["eps"] for r in rows], [r["robust_acc"] for r in rows], "o-")
    ax.set_xlabel("eps (L-infinity, pixel units)")
    ax.set_ylabel("test accuracy under attack")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    data = _png(fig)
    plt.close(fig)
    return data


# ====================================================================== command line


def parse_sweep(text):
    if not text:
        return None
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(
            f"--sweep {text!r} is not a comma-separated list of numbers, e.g. 0,0.02,0.05,0.1"
        ) from None
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if not values or bad:
        raise UserError(f"--sweep values must be in [0, 1] (pixel units), got {text!r}")
    return values


def check_settings(eps, alpha, steps, limit, batch_size):
    if not 0.0 <= eps <= 1.0:
        raise UserError(f"--eps {eps} is outside [0, 1]; eps is in pixel units, e.g. 0.1")
    if not 0.0 < alpha <= 1.0:
        raise UserError(f"--alpha {alpha} must be in (0, 1], e.g. 0.01")
    if steps < 1:
        raise UserError(f"--steps {steps} must be at least 1 (1 with --alpha = --eps is FGSM)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit} must be at least 1 (or omit it for the whole test set)")
    if batch_size < 1:
        raise UserError(f"--batch_size {batch_size} must be at least 1")


def load_question4_run(run) -> TrainedModel:
    """The best model of a Question 4 run (demo_scratch.py), on the CPU in eval mode; it
    takes images in [0, 1]. Any other folder is a one-line UserError."""
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; give a demo_scratch.py --output_dir")
    scratch_recipe()  # a kit without Question 4 says so, whatever the folder holds
    try:
        found = read_run(run_dir)
    except UserError:
        found = None
    if found is None or found.kind != "scratch":
        raise UserError(f"{run_dir} is not a Question 4 run (no demo_scratch.py config.yaml)")
    return load_trained_model(found)


def run_attack(
    run,
    attack: Attack,
    eps=0.1,
    alpha=0.01,
    steps=20,
    targeted=False,
    sweep=None,
    limit=None,
    batch_size=256,
    data_dir=None,
    device="auto",
    random_start=True,
    examples=8,
    out=None,
    target="next",
    tensorboard_images=16,
):
    """What ``python adversarial.py --run RUN`` does with the student's ``attack``; returns
    the dict written to ``adversarial.json``. ``targeted`` attacks aim at ``target`` (see
    ``TARGETS``). The first ``tensorboard_images`` clean and attacked images of every batch
    go to TensorBoard (``RUN/tensorboard/adversarial``, tags ``Org_Image`` and ``Adv_Image``,
    one step per batch; 0 writes none)."""
    out = out or sys.stdout
    from tqdm import tqdm

    check_settings(eps, alpha, steps, limit, batch_size)
    run_dir = Path(run)
    trained = load_question4_run(run_dir)
    test = test_images(trained, limit, data_dir)
    images, labels, synthetic = test.pixels, test.labels, test.synthetic
    class_names = test.class_names
    dev = select_device(0, device)
    model = trained.model.to(dev)
    if synthetic:
        print(
            "SYNTHETIC DATA: this run's test set is generated, not the real dataset; "
            "its accuracies say nothing about the real one",
            file=out,
        )
    if targeted and target not in TARGETS:
        raise UserError(f"--target {target} is unknown; use one of {', '.join(TARGETS)}")
    source = TensorBatches(images, labels, batch_size, dev)
    kind = f"targeted ({target.replace('_', '-')} class)" if targeted else "untargeted"
    print(
        f"PGD-{steps} {kind}, eps {eps}, alpha {alpha} on {len(labels)} test images "
        f"of {run_dir} ({dev})",
        file=out,
    )
    start = time.perf_counter()
    writer = None
    if tensorboard_images:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir / "tensorboard" / "adversarial")

    def log_images(index, clean, adv):  # CS771's students page through the batches here
        writer.add_images("Org_Image", clean[:tensorboard_images].float(), index)
        writer.add_images("Adv_Image", adv[:tensorboard_images].float(), index)

    try:
        with tqdm(total=len(labels), desc=f"eps {eps}", unit="img", dynamic_ncols=True) as bar:
            main = attack_source(
                model,
                source,
                attack,
                eps,
                alpha,
                steps,
                random_start=random_start,
                targeted=targeted,
                target=target,
                keep=examples,
                progress=bar,
                on_batch=log_images if writer is not None else None,
            )
    finally:
        if writer is not None:
            writer.close()
    result = {
        "run": str(run_dir),
        "attack": "pgd_linf",
        "eps": eps,
        "alpha": alpha,
        "steps": steps,
        "random_start": random_start,
        "targeted": targeted,
        "target": TARGETS[target] if targeted else None,
        "split": "test",
        "num_images": main.count,
        "synthetic": bool(synthetic),
        "clean_acc": main.clean_acc,
        "robust_acc": main.robust_acc,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if targeted:
        result["target_success_rate"] = main.target_rate
    line = f"clean accuracy {main.clean_acc:.4f}, accuracy under attack {main.robust_acc:.4f}"
    if targeted:
        line += f", reached the target class {main.target_rate:.4f}"
    print(line, file=out)
    sweep_rows = None
    if sweep:
        sweep_rows = []
        for e in sweep:
            if e == eps:
                acc = main.robust_acc
            else:
                with tqdm(
                    total=len(labels), desc=f"eps {e}", unit="img", dynamic_ncols=True
                ) as bar:
                    r = attack_source(
                        model,
                        source,
                        attack,
                        e,
                        alpha,
                        steps,
                        random_start=random_start,
                        targeted=targeted,
                        target=target,
                        progress=bar,
                    )
                acc = r.robust_acc
            sweep_rows.append({"eps": e, "robust_acc": acc})
            print(f"  eps {e:<6g} accuracy under attack {acc:.4f}", file=out)
        result["sweep"] = sweep_rows
    written = []
    if main.examples is not None:
        title = f"PGD-{steps} eps {eps} ({'targeted' if targeted else 'untargeted'})"
        if synthetic:
            title += " - SYNTHETIC DATA"
        atomic_write_bytes(
            run_dir / EXAMPLES_FILE, examples_figure(main.examples, class_names, eps, title)
        )
        written.append(EXAMPLES_FILE)
    if sweep_rows:
        title = f"PGD-{steps}, alpha {alpha}: {run_dir.name}" + (
            " (SYNTHETIC)" if synthetic else ""
        )
        atomic_write_bytes(run_dir / SWEEP_FILE, sweep_figure(sweep_rows, title))
        written.append(SWEEP_FILE)
    if (run_dir / RESULT_FILE).exists():
        print(f"replacing the previous {run_dir / RESULT_FILE}", file=out)
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    written.append(RESULT_FILE)
    print(f"wrote {', '.join(written)} in {run_dir}", file=out)
    return result
