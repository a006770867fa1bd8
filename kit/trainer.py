"""The one training loop of the kit: every demo (flowers, PixMo, training from scratch)
builds a model and batch sources and hands them to ``Trainer``; a demo declares only its
data and model settings, and ``TrainConfig`` holds the training settings they share.

Trainer
-------
``Trainer(model, train_source, val_source, run_dir, config)`` runs the epochs. It knows
nothing about images: a *batch source* is any object with

    len(source)                     # batches per epoch on this process
    source.batches(epoch, start)    # yields (input_1, ..., input_k, labels) already on the
                                    # device, starting at batch number `start`; the same
                                    # (epoch, start) must give the same batches (resumption)
    source.state_dict() / load_state_dict(state)   # what decides future batches (the seed)

and the model is called as ``model(input_1, ..., input_k)`` -> logits (B, C). Labels are
int64 (B,); a label of -1 is ignored (unknown) by the loss and the accuracies. (A captioner
returns its scores flattened to (N * T, V), with the labels (N * T,) and -1 at padding.) ``kit.device_batches.ImageBatchSource`` is
the ready-made implementation (uint8 images on the device, crop/flip/normalise per batch,
optional points moved with the crop); under DDP each rank's source yields its own shard.

What the Trainer does: bf16 autocast on CUDA; optional ``torch.compile``; DDP when
``torch.distributed`` is initialised (see ``kit.distributed.init_distributed``); count-based
accuracy (correct / count summed over all processes); TensorBoard scalars ``lr``,
``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``; tqdm bars on rank 0; ``best.pt``
(best validation accuracy) and ``checkpoint.pt`` every epoch (or every
``checkpoint_every`` epochs), both written atomically;
``resume=True`` continues from ``checkpoint.pt`` exactly (model, optimizer, scheduler,
epoch and step, RNG states of every process, batch-source seed), and a run folder that
has only config.yaml (stopped before its first checkpoint) starts again from step 0;
SIGTERM, SIGUSR1 or a first Ctrl-C -> finish the current step, write the checkpoint, raise
``kit.stopping.Preempted`` (the demos exit with status 75 so Slurm requeues the job).
"Stopped at" and "resumed from" name the same position in the same words (``position``).

Example (what the flower demo does)::

    ctx = init_distributed()
    model = ViTPrompt(102).to(ctx.device)
    trainer = Trainer(model, train_src, val_src, run_dir, TrainConfig(lr=0.01), dist_ctx=ctx)
    result = trainer.fit()          # {'history': [...], 'best_val_acc': ..., 'best_epoch': ...}
    load_trainable_state(model, torch.load(run_dir / "best.pt")["model"])
    inference(model, test_src, run_dir / "test_flower.txt")
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from kit.distributed import DistContext, get_rng_state, set_rng_state
from kit.runs import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    BackgroundSaver,
    setup_logging,
    write_predictions,
)
from kit.stopping import Preempted, stop_on_signals, stop_requested

# ====================================================================== trainable state


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` that change in training: the trainable
    parameters (prompts, head, ... or everything) and the buffers of every module that owns
    one (a trainable BatchNorm's running statistics). The frozen rest comes from the weights.

    The values are the live tensors, not copies: save them at once (``BackgroundSaver``
    copies them to the CPU itself, so a copy here would be made twice every epoch)."""
    names = set()
    for prefix, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if own:
            dot = f"{prefix}." if prefix else ""
            names.update(dot + n for n in own)
            names.update(dot + n for n, _ in module.named_buffers(recurse=False))
    return {k: v for k, v in model.state_dict().items() if k in names}  # state_dict detaches


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what ``trainable_state_dict`` saved; the frozen rest comes from the weights file."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lacking = sorted(trainable & set(missing))
    if unexpected or lacking:
        raise RuntimeError(
            f"checkpoint does not fit the model: missing {lacking}, unexpected {unexpected}"
        )


# ====================================================================== optimisation


@dataclass
class TrainConfig:
    """The training settings every demo shares: optimiser, schedule, batch, machine. A
    demo's config subclasses it, adds its data and model settings and may give some of
    these other defaults (its recipe); the defaults here are Question 2's (SGD, lr 1e-3,
    lr / 10 at epochs 60 and 80 of 100, batch 32), but for the momentum."""

    epochs: int = 100
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.001
    weight_decay: float = 0.01
    momentum: float = 0.9  # SGD only
    scheduler: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [60, 80])  # epochs (multistep)
    gamma: float = 0.1  # multistep factor
    warmup_epochs: float = 0.0  # linear warm-up (any scheduler)
    batch_size: int = 32  # images per optimiser step, over all processes
    eval_batch_size: int = 128  # per process
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: CUDA when there is one
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    seed: int = 0
    log_every: int = 20  # steps between progress-bar loss updates
    checkpoint_every: int = 1  # epochs between checkpoint.pt writes (also the last, and on stop)

    @classmethod
    def from_config(cls, config: Any) -> TrainConfig:
        """Take the fields this class knows from any config object with the same names."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else vars(config)
        return cls(**{k: v for k, v in values.items() if k in names})


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer '{config.optimizer}'; use sgd or adamw")


class LRSchedule:
    """Learning-rate factor per optimiser step (a picklable callable for LambdaLR).

    multistep: x gamma at each milestone epoch (the original MultiStepLR, stepped per epoch);
    cosine: half a cosine from 1 to 0 over the run; constant: 1. An optional linear warm-up
    over ``warmup_epochs`` multiplies any of them.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.kind = config.scheduler
        self.spe = max(1, steps_per_epoch)
        self.total = max(1, config.epochs * self.spe)
        self.warmup = int(round(config.warmup_epochs * self.spe))
        self.milestones = [int(m) for m in config.milestones]
        self.gamma = config.gamma

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.kind == "multistep":
            epoch = step // self.spe
            return warm * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.kind == "cosine":
            t = min(1.0, max(0.0, (step - self.warmup) / max(1, self.total - self.warmup)))
            return warm * 0.5 * (1.0 + math.cos(math.pi * t))
        return warm


def build_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    if config.scheduler not in ("multistep", "cosine", "constant"):
        raise ValueError(
            f"unknown scheduler '{config.scheduler}'; use multistep, cosine or constant"
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(config, steps_per_epoch))


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        return device.type == "cuda"
    return precision == "bf16"


def cpu_compiler_found() -> bool:
    """Whether a C++ compiler is on PATH, which torch.compile needs to run on a CPU."""
    return any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++", "c++", "cl") if c)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast (matmuls and convs in bfloat16, reductions in float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# ====================================================================== trainer


def _all_reduce(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over all processes (float64, exact for counts)."""
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(t)
    return t.tolist()


class Trainer:
    """Trains ``model`` on a batch source; see the module docstring for the contract.

    Args:
        model: an nn.Module already on ``dist_ctx.device``; ``model(*inputs) -> logits``.
        train_source, val_source: batch sources (this process's shard).
        run_dir: the run directory (already prepared with ``prepare_run_dir``).
        config: TrainConfig.
        dist_ctx: from ``init_distributed()`` (default: single CPU/GPU process).
        full_config: the demo's whole resolved config, stored in checkpoints.
        loss_fn: ``loss_fn(logits, labels, reduction)``; default cross-entropy.
        resume: continue from ``run_dir/checkpoint.pt``.
        on_step_end: optional ``callback(trainer, epoch, step)`` after every optimiser step
            (tests use it to simulate preemption with ``trainer.request_stop()``).
    """

    def __init__(
        self,
        model: nn.Module,
        train_source,
        val_source,
        run_dir: str | Path,
        config: TrainConfig,
        *,
        dist_ctx: DistContext | None = None,
        full_config: dict | None = None,
        loss_fn: Callable | None = None,
        resume: bool = False,
        logger=None,
        on_step_end: Callable | None = None,
    ):
        self.ctx = dist_ctx or DistContext(device=next(model.parameters()).device)
        self.model = model
        self.train_source, self.val_source = train_source, val_source
        self.run_dir = Path(run_dir)
        self.config = config
        self.full_config = full_config if full_config is not None else dataclasses.asdict(config)
        self.loss_fn = loss_fn or (
            lambda logits, y, reduction="mean": F.cross_entropy(
                logits, y, ignore_index=-1, reduction=reduction
            )
        )
        self.resume = resume
        self.log = logger or setup_logging(self.run_dir, self.ctx.is_main)
        self.on_step_end = on_step_end
        self.bf16 = use_bf16(config.precision, self.ctx.device)
        self._stop = False

        compile_fn = lambda m: torch.compile(m, mode=config.compile_mode)  # noqa: E731
        use_compile = config.compile
        if use_compile and self.ctx.device.type == "cpu" and not cpu_compiler_found():
            # Inductor writes C++ on a CPU; without a compiler the first step would fail.
            self.log.warning(
                "compile: true, but torch.compile on a CPU needs a C++ compiler (g++ or clang++; "
                "$CXX) and none was found: training without it (same model, slower)"
            )
            use_compile = False
        self.eval_model = compile_fn(model) if use_compile else model
        self.train_model = self.eval_model
        if self.ctx.distributed:
            ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.ctx.local_rank] if self.ctx.device.type == "cuda" else None
            )
            self.train_model = compile_fn(ddp) if use_compile else ddp
        self.optimizer = build_optimizer(model.parameters(), config)
        self.scheduler = build_scheduler(self.optimizer, config, len(train_source))
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_val_acc, self.best_epoch = -1.0, -1
        self.history: list[dict] = []
        self._partial = [0.0, 0.0, 0.0]  # loss sum, correct, count of an interrupted epoch
        self.saver = BackgroundSaver()  # checkpoint/best writes overlap the next epoch

    # ---------------------------------------------------------------- stopping

    def request_stop(self) -> None:
        """Ask the trainer to checkpoint and stop at the next step boundary."""
        self._stop = True

    def _should_stop(self, step: int) -> bool:
        """True when this trainer or a signal (``kit.stopping.stop_on_signals``) asked to
        stop; under DDP the ranks agree, every 10 steps, so that all stop at the same step."""
        stop = self._stop or stop_requested()
        if not self.ctx.distributed:
            return stop
        if step % 10:
            return False
        return _all_reduce([float(stop)], self.ctx)[0] > 0

    def position(self, epoch: int, step_in_epoch: int) -> str:
        """Where training stands, in the words both "stopped" and "resumed" messages use:
        ``epoch`` counts the finished epochs and ``step_in_epoch`` the steps done of the
        next one (how checkpoints store it); epochs are shown 1-based, like the progress
        bar and the log."""
        if step_in_epoch == 0:
            if epoch == 0:
                return f"the start (epoch 1 of {self.config.epochs}, no step done)"
            return f"the end of epoch {epoch} of {self.config.epochs}"
        steps = len(self.train_source)
        return f"epoch {epoch + 1} of {self.config.epochs}, step {step_in_epoch} of {steps}"

    def _stop_now(self, epoch: int, step_in_epoch: int) -> None:
        where = self.position(epoch, step_in_epoch)
        self.log.warning(f"stop requested: {CHECKPOINT_FILE} written at {where}")
        raise Preempted(f"{CHECKPOINT_FILE} written at {where}")

    # ---------------------------------------------------------------- checkpoints

    def _rng_states(self) -> list:
        state = get_rng_state()
        if not self.ctx.distributed:
            return [state]
        states = [None] * self.ctx.world_size
        dist.all_gather_object(states, state)
        return states

    def save_checkpoint(self, epoch: int, step_in_epoch: int, partial: list[float]) -> None:
        """Collective under DDP (every rank must call it); rank 0 writes checkpoint.pt."""
        rng = self._rng_states()
        partial = _all_reduce(partial, self.ctx)  # rank 0 carries the whole partial sums
        if not self.ctx.is_main:
            return
        state = {
            "model": trainable_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "partial": partial,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config": self.full_config,
            "rng": rng,
            "world_size": self.ctx.world_size,
            "train_source": self.train_source.state_dict(),
        }
        self.saver.save(state, self.run_dir / CHECKPOINT_FILE)

    def load_checkpoint(self) -> None:
        ckpt = torch.load(self.run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        load_trainable_state(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.global_step = ckpt["global_step"]
        self.best_val_acc, self.best_epoch = ckpt["best_val_acc"], ckpt["best_epoch"]
        self.history = ckpt["history"]
        self.train_source.load_state_dict(ckpt["train_source"])
        # Only rank 0 carries the partial sums of an interrupted epoch (see save_checkpoint).
        self._partial = list(ckpt["partial"]) if self.ctx.is_main else [0.0, 0.0, 0.0]
        rng = ckpt["rng"]
        if len(rng) == self.ctx.world_size:
            set_rng_state(rng[self.ctx.rank])
        else:
            self.log.warning(
                f"checkpoint was written by {len(rng)} processes, now {self.ctx.world_size}: "
                "random streams restart (results will differ slightly from an uninterrupted run)"
            )
            set_rng_state(rng[0])
        self.log.info(
            f"resumed from {self.run_dir / CHECKPOINT_FILE} at "
            f"{self.position(self.epoch, self.step_in_epoch)}"
        )

    # ---------------------------------------------------------------- loops

    def _forward_loss(self, model, batch, reduction="mean"):
        *inputs, labels = batch
        with autocast(self.ctx.device, self.bf16):
            logits = model(*inputs)
        logits = logits.float()
        return self.loss_fn(logits, labels, reduction=reduction), logits, labels

    @torch.no_grad()
    def evaluate(self, source) -> tuple[float, float]:
        """(mean loss, accuracy) over every labelled sample of ``source``, all processes."""
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.ctx.device)
        for batch in source.batches(0):
            loss, logits, labels = self._forward_loss(self.eval_model, batch, reduction="sum")
            known = labels >= 0  # masks, not boolean indexing: indexing would wait for the GPU
            totals[0] += loss.double()
            totals[1] += ((logits.argmax(1) == labels) & known).sum()
            totals[2] += known.sum()
        loss_sum, correct, count = _all_reduce(totals.tolist(), self.ctx)
        return loss_sum / max(count, 1), correct / max(count, 1)

    def _train_epoch(self, epoch: int, start: int):
        self.model.train()
        totals = torch.tensor(self._partial, dtype=torch.float64, device=self.ctx.device)
        self._partial = [0.0, 0.0, 0.0]
        bar = tqdm(
            total=len(self.train_source),
            initial=start,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=not self.ctx.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        for step, batch in enumerate(self.train_source.batches(epoch, start), start=start):
            loss, logits, labels = self._forward_loss(self.train_model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.global_step += 1
            known = labels >= 0  # a label of -1 (e.g. caption padding) counts nowhere
            n = known.sum()
            totals[0] += loss.detach().double() * n
            totals[1] += ((logits.detach().argmax(1) == labels) & known).sum()
            totals[2] += n
            bar.update(1)
            if self.ctx.is_main and (step + 1) % self.config.log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")  # .item() waits for the GPU: rarely
            if self.on_step_end is not None:
                self.on_step_end(self, epoch, step)
            if step + 1 < len(self.train_source) and self._should_stop(step + 1):
                bar.close()
                self.save_checkpoint(epoch, step + 1, totals.tolist())
                self.saver.wait()  # on disk before the message says so
                self._stop_now(epoch, step + 1)
        bar.close()
        loss_sum, correct, count = _all_reduce(totals.tolist(), self.ctx)
        return loss_sum / max(count, 1), correct / max(count, 1)

    def fit(self) -> dict:
        """Train for ``config.epochs`` epochs (or what is left of them when resuming)."""
        if self.resume and (self.run_dir / CHECKPOINT_FILE).is_file():
            self.load_checkpoint()
        elif self.resume:
            # Stopped before its first checkpoint (Ctrl-C twice, a crash, a node failure):
            # nothing to restore, so this is the same run started again.
            self.log.info(
                f"no {CHECKPOINT_FILE} in {self.run_dir} yet (the run stopped before its first "
                f"checkpoint): starting from step 0 with the saved settings ({CONFIG_FILE})"
            )
        writer = None
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.epoch)
        try:
            with stop_on_signals():  # also when used without run_main (notebooks, tests)
                self._fit_epochs(writer)
        finally:
            self.saver.wait()  # every checkpoint on disk before fit returns or Preempted exits
            if writer is not None:
                writer.close()
        return {
            "history": self.history,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
        }

    def _fit_epochs(self, writer) -> None:
        for epoch in range(self.epoch, self.config.epochs):
            # The lr at the epoch's first step, also when resuming in the middle of the epoch
            # (LambdaLR computes exactly this product for the optimiser).
            lr = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](
                epoch * len(self.train_source)
            )
            train_loss, train_acc = self._train_epoch(epoch, self.step_in_epoch)
            self.step_in_epoch = 0
            val_loss, val_acc = self.evaluate(self.val_source)
            row = dict(
                epoch=epoch + 1,
                lr=lr,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
            )
            self.history.append(row)
            improved = val_acc > self.best_val_acc
            if improved:
                self.best_val_acc, self.best_epoch = val_acc, epoch + 1
            if writer is not None:
                for k in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):
                    writer.add_scalar(k, row[k], epoch + 1)
                writer.flush()
            self.log.info(
                f"epoch {epoch + 1}/{self.config.epochs}  lr {lr:.2e}  train loss {train_loss:.4f} "
                f"acc {train_acc:.4f}  val loss {val_loss:.4f} acc {val_acc:.4f}"
                + ("  (best)" if improved else "")
            )
            if improved and self.ctx.is_main:
                self.saver.save(
                    {
                        "model": trainable_state_dict(self.model),
                        "epoch": epoch + 1,
                        "val_acc": val_acc,
                        "config": self.full_config,
                    },
                    self.run_dir / BEST_FILE,
                )
            last = epoch + 1 == self.config.epochs
            stop = not last and self._should_stop(0)  # collective under DDP: every rank asks
            if stop or last or (epoch + 1) % max(1, self.config.checkpoint_every) == 0:
                self.save_checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0])
            self.epoch = epoch + 1
            if stop:
                self.saver.wait()
                self._stop_now(epoch + 1, 0)


# ====================================================================== inference


@torch.no_grad()
def predict(model: nn.Module, source, precision: str = "auto") -> list[int]:
    """Arg-max class of every sample of ``source`` (in order), as Python ints."""
    device = next(model.parameters()).device
    model.eval()
    bf16 = use_bf16(precision, device)
    preds = []
    for *inputs, _labels in source.batches(0):
        with autocast(device, bf16):
            logits = model(*inputs)
        preds.append(logits.float().argmax(1).cpu())
    return torch.cat(preds).tolist() if preds else []


def inference(
    model: nn.Module,
    test_source,
    path: str | Path,
    precision: str = "auto",
    synthetic: bool = False,
) -> list[int]:
    """Predict the test set and write ``path`` (e.g. test_flower.txt): one class per line,
    in test-set order, written atomically; with ``synthetic`` the file starts with
    ``kit.runs.SYNTHETIC_MARKER`` (the grader refuses it). Returns the predictions."""
    preds = predict(model, test_source, precision)
    write_predictions(path, preds, synthetic=synthetic)
    return preds


def fit_and_predict(
    trainer: Trainer,
    test_source,
    filename: str,
    precision: str = "auto",
    synthetic: bool | None = None,
):
    """Train, then predict the test set with the best model (by validation accuracy).

    Writes ``<run_dir>/<filename>`` atomically on rank 0. ``synthetic`` (default: the
    ``synthetic_data`` entry of the trainer's ``full_config``) marks the file as made from
    synthetic data, and the message that names it says so. Returns ``(fit result,
    predictions)``; the predictions are None on the other ranks.
    """
    if synthetic is None:
        synthetic = bool(trainer.full_config.get("synthetic_data", False))
    result = trainer.fit()
    if not trainer.ctx.is_main:
        return result, None
    path = trainer.run_dir / filename
    best = torch.load(
        trainer.run_dir / BEST_FILE, map_location=trainer.ctx.device, weights_only=False
    )
    load_trainable_state(trainer.model, best["model"])
    preds = inference(trainer.model, test_source, path, precision, synthetic=synthetic)
    best_line = f"best val acc {result['best_val_acc']:.4f} (epoch {result['best_epoch']}); "
    if synthetic:
        trainer.log.warning(
            best_line + f"wrote {len(preds)} predictions to {path}: SYNTHETIC DATA, do not "
            "upload (the grader refuses it); train on the real data for the file to upload"
        )
    else:
        trainer.log.info(best_line + f"wrote {len(preds)} predictions to {path}")
    return result, preds
