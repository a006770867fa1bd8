"""What the two end-to-end pipeline benchmarks share (bench_flower_pipeline.py and
bench_pixmo_pipeline.py): their flags, the original kit's training loop, and the report.

The original pipeline is much slower than ours (that is the point), so timing all of its
epochs can take longer than a GPU session allows. ``--original_epochs K`` times K epochs of
it; the report then gives the measured seconds and, clearly labelled as a projection,
K epochs scaled to the full run (epoch times are steady: the same work every epoch, and the
DataLoader workers start once). The speed-up is always per epoch: (original s/epoch) /
(ours s/epoch), ours timed over the full run including its one-off preprocessing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Callable, Iterable

import torch
import torch.nn.functional as F


def add_arguments(parser: argparse.ArgumentParser, full_epochs: int, workers: int) -> None:
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"default {full_epochs} (1 with --tiny)"
    )
    parser.add_argument(
        "--original_epochs",
        type=int,
        default=None,
        help="epochs to time the original for (default: --epochs); the full run is projected",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU check that it runs")
    parser.add_argument("--data_dir", default=None, help="the real data (default: synthetic)")
    parser.add_argument(
        "--workers", type=int, default=workers, help="original's DataLoader workers"
    )
    parser.add_argument("--only", choices=["both", "ours", "original"], default="both")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--compile_mode", default="default", help="e.g. reduce-overhead")
    parser.add_argument(
        "--synthetic_dir",
        default=None,
        help="keep the generated synthetic data here and reuse it when it matches "
        "(default: a temporary folder, generated again every run)",
    )
    parser.add_argument("--json", default=None, help="also write the summary to this file")


def fit_ours(model, train, val, train_config, device, start: float, prep_seconds: float) -> dict:
    """Our side: the kit's Trainer (validation and checkpoints every epoch, as in a real run)
    in a throw-away run folder. ``start``: ``time.perf_counter()`` when our side began, so
    that the one-off preprocessing counts. Returns seconds, prep seconds and accuracy."""
    from kit.distributed import DistContext
    from kit.runs import setup_logging
    from kit.trainer import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            model, train, val, run_dir, train_config, dist_ctx=DistContext(device=device),
            logger=setup_logging(None, True, name="bench"),
        )  # fmt: skip
        result = trainer.fit()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return dict(seconds=time.perf_counter() - start, prep_seconds=prep_seconds,
                final_val_acc=result["history"][-1]["val_acc"])  # fmt: skip


def run_original_loop(
    model: torch.nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    split_batch: Callable[[tuple], tuple[tuple, torch.Tensor]],
    scheduler=None,
) -> dict:
    """The original kit's loop, fp32: per epoch, train on every batch of ``train_loader``
    (stepping ``scheduler`` once), then count validation accuracy. ``split_batch(batch)``
    returns ``(model inputs, labels)`` of a loader batch. Returns seconds and accuracy."""
    start = time.perf_counter()
    correct = count = 0
    for _epoch in range(epochs):
        model.train()
        for batch in train_loader:
            inputs, labels = split_batch(batch)
            inputs = [x.to(device, non_blocking=True) for x in inputs]
            loss = F.cross_entropy(model(*inputs), labels.to(device, non_blocking=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        model.eval()
        correct = count = 0
        with torch.no_grad():
            for batch in val_loader:
                inputs, labels = split_batch(batch)
                logits = model(*[x.to(device) for x in inputs])
                correct += (logits.argmax(1).cpu() == labels).sum().item()
                count += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, epochs=epochs, final_val_acc=correct / max(count, 1))


def run_and_report(
    args: argparse.Namespace,
    epochs: int,
    run_ours: Callable[[], dict],
    run_original: Callable[[int], dict],
    target: str,
    summary: dict,
) -> dict:
    """Run the sides that ``--only`` asks for (the original for ``--original_epochs``, at
    most ``epochs``), then ``report``. Returns the results."""
    if summary.get("device") == "cpu":
        print("CPU run: checks that the benchmark executes; the figures are NOT the GPU targets.")
    results = {}
    if args.only in ("both", "ours"):
        results["ours"] = run_ours()
    if args.only in ("both", "original"):
        original = run_original(min(args.original_epochs or epochs, epochs))
        results["original"] = dict(original, workers=args.workers)
    report(results, epochs, target, summary, args.json)
    return results


def report(results: dict, epochs: int, target: str, summary: dict, json_path=None) -> None:
    """Print both sides, the per-epoch speed-up (and projection, if the original ran fewer
    epochs), then one JSON line with everything (also written to ``json_path`` if given)."""
    ours, original = results.get("ours"), results.get("original")
    if ours:
        print(
            f"ours      {ours['seconds']:8.1f} s for {epochs} epochs  (one-off preprocessing "
            f"{ours['prep_seconds']:.1f} s)  val acc {ours['final_val_acc']:.3f}"
        )
    if original:
        done = original["epochs"]
        line = (
            f"original  {original['seconds']:8.1f} s for {done} epochs  "
            f"val acc {original['final_val_acc']:.3f}"
        )
        if done != epochs:
            original["projected_seconds"] = original["seconds"] * epochs / done
            line += f"  (PROJECTED to {epochs} epochs: {original['projected_seconds']:.1f} s)"
        print(line)
    if ours and original:
        ratio = (original["seconds"] / original["epochs"]) / (ours["seconds"] / epochs)
        results["speedup_per_epoch"] = ratio
        print(f"speed-up ours vs original, per epoch: {ratio:.1f}x ({target})")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    line = json.dumps({**summary, "load_avg_1min": load, "results": results})
    print(line)
    if json_path:
        from kit.runs import atomic_write_text

        atomic_write_text(json_path, line + "\n")
