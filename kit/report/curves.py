"""``report.py curves``: training and validation loss and accuracy per epoch, one colour per
run, the best validation accuracy starred."""

from __future__ import annotations

from pathlib import Path

from kit.finished_runs import Run
from kit.report.common import pyplot, save_figure
from kit.report.scalars import read_scalars

CURVE_PANELS = (  # (tag, panel title, y label)
    ("train_loss", "training loss", "loss"),
    ("val_loss", "validation loss", "loss"),
    ("train_acc", "training accuracy", "accuracy"),
    ("val_acc", "validation accuracy", "accuracy"),
)
CURVES_FIGSIZE = (11.0, 8.0)  # inches


def draw_curves(runs: list[Run], out: str) -> Path:
    """Loss and accuracy per epoch, training and validation, a panel each, a colour per run."""
    scalars = [read_scalars(run) for run in runs]  # every error before drawing anything
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=CURVES_FIGSIZE, sharex=True, layout="constrained")
    colours = plt.get_cmap("tab10")
    for i, (run, values) in enumerate(zip(runs, scalars)):
        label = run.name + (" [synthetic data]" if run.synthetic else "")
        for ax, (tag, _, _) in zip(axes.flat, CURVE_PANELS):
            points = values.get(tag, [])
            if not points:
                continue
            steps, ys = zip(*points)
            marker = "o" if len(steps) <= 30 else None
            ax.plot(steps, ys, color=colours(i % 10), marker=marker, ms=3, label=label)
            if tag == "val_acc":
                best = max(range(len(ys)), key=lambda k: (ys[k], -k))  # first best, as Trainer
                ax.plot(steps[best], ys[best], "*", color=colours(i % 10), ms=13, mec="black")
    for ax, (_, title, ylabel) in zip(axes.flat, CURVE_PANELS):
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[1][1].legend(title="run (star: best validation accuracy)", fontsize=8)
    synthetic = any(run.synthetic for run in runs)
    fig.suptitle(
        "Training curves"
        + ("  (runs marked [synthetic data] are NOT real results)" if synthetic else "")
    )
    return save_figure(fig, out)
