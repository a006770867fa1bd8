"""What a run folder says about its training: TensorBoard scalars, time, test accuracy, status.

Read with TensorBoard's own event readers (which also drop the events a resumed run
replaced), and Question 4's summary.json where there is one.
"""

from __future__ import annotations

import re

from kit.finished_runs import Run


def read_scalars(run: Run) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run as {tag: [(step, value), ...]} sorted by step (step = epoch).

    Read with TensorBoard's own ``EventAccumulator`` (which also drops the events a resumed
    run replaced). Raises UserError when the run has no finished epoch yet.
    """
    folder = run.path / "tensorboard"
    if not folder.is_dir() or not any(folder.glob("events.out.tfevents.*")):
        raise run.not_trained_yet("TensorBoard events (tensorboard/)")
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(folder),
        size_guidance={event_accumulator.SCALARS: 0},  # 0 = keep every event
    )
    acc.Reload()
    scalars = {}
    for tag in acc.Tags().get("scalars", []):
        by_step = {e.step: e.value for e in acc.Scalars(tag)}  # a repeated step: the last wins
        scalars[tag] = sorted(by_step.items())
    if not scalars.get("val_acc"):
        raise run.not_trained_yet("val_acc in tensorboard/")
    return scalars


def training_seconds(run: Run) -> float | None:
    """Seconds spent training: Question 4's summary.json, else the span of the TensorBoard
    event times of each event file (one per start of the run), summed over the files."""
    summary = run.summary
    if summary and isinstance(summary.get("train_seconds"), (int, float)):
        return float(summary["train_seconds"])
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, found = 0.0, False
    for path in sorted((run.path / "tensorboard").glob("events.out.tfevents.*")):
        times = [event.wall_time for event in EventFileLoader(str(path)).Load()]
        if len(times) > 1:
            total += max(times) - min(times)  # from the writer's creation to its last epoch
            found = True
    return total if found else None


def test_accuracy(run: Run, scalars: dict) -> float | None:
    """The run's test accuracy when it knows it: summary.json / a ``test_acc`` scalar
    (Question 4; ``test_token_accuracy`` where a run scores words instead of classes), or the
    'synthetic test accuracy' line the flower and PixMo demos log when the test labels are
    known (synthetic data only; real test labels are hidden)."""
    summary = run.summary
    for key in ("test_acc", "test_token_accuracy"):  # a captioner's greedy token accuracy
        if summary and isinstance(summary.get(key), (int, float)):
            return float(summary[key])
    if scalars.get("test_acc"):
        return float(scalars["test_acc"][-1][1])
    found = re.findall(r"synthetic test accuracy ([0-9.]+)", run.log_text)
    return float(found[-1]) if found else None


def run_status(run: Run, scalars: dict) -> tuple[bool, str]:
    """(finished, text): finished when summary.json says so or train.log ends with the demos'
    'done in ...s'; otherwise 'in progress (k/E epochs)' (running, or stopped: --resume)."""
    summary = run.summary
    if (summary and summary.get("finished")) or re.search(r"\bdone in [0-9.]+s", run.log_text):
        return True, "finished"
    epochs = scalars["val_acc"][-1][0]
    total = run.config.get("epochs", "?")
    return False, f"in progress ({epochs}/{total} epochs)"
