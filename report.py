"""Figures and tables for your report, drawn from the run folders the demos write.

    python report.py curves RUN [RUN ...] --out curves.png
    python report.py ablation RUN [RUN ...] --base RUN --out ablation.md [--format latex]
    python report.py attention --run RUN [--images 4] [--rollout] --out attention.png
    python report.py posemb --run RUN --out posemb.png
    python report.py preview flower|pixmo|scratch [--data_dir D] --out preview.png

A RUN is the ``--output_dir`` of ``demo_flower.py`` (Question 2), ``demo_pixmo.py``
(Question 3) or ``demo_scratch.py`` (Question 4): ``config.yaml``, ``train.log``,
``tensorboard/``, ``best.pt``, ... Figures are PNG at 150 dpi, or vector graphics when
``--out`` ends in ``.pdf`` or ``.svg``. Every output file is written atomically.

- ``curves``: training and validation loss and accuracy per epoch (TensorBoard's own event
  reader), one colour per run.
- ``ablation``: one row per run with the settings that differ from ``--base`` (read from
  each ``config.yaml``), best validation accuracy and its epoch, test accuracy when the run
  knows it (marked synthetic when the data was), training time, and whether it finished.
- ``attention``: for a ViT run, the attention of the [CLS] token to every patch, per head of
  the last layer, their mean, the head mean of every layer and (``--rollout``) the attention
  rollout of your own ``transformer_utils.attention_rollout``, over test images.
- ``posemb``: cosine similarity between the learned position embeddings of all patches,
  arranged on the patch grid (the ViT paper, Fig. 7).
- ``preview``: a grid of dataset images with their class (PixMo: with the point).

Bad input (no such run, a run of the wrong kind, a run with no finished epoch yet) gives a
one-line ``error: ...`` and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training_utils import BEST_FILE, CONFIG_FILE, LOG_FILE, UserError, read_predictions

DPI = 150  # PNG resolution: sharp when printed at the figure's size
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
SUMMARY_FILE = "summary.json"  # Question 4's end-of-run summary
PREDICTION_FILES = {"flower": "test_flower.txt", "pixmo": "test_pixmo.txt"}
KIND_NAMES = {
    "flower": "a flower run (Question 2, demo_flower.py)",
    "pixmo": "a PixMo run (Question 3, demo_pixmo.py)",
    "scratch": "a Question 4 run (demo_scratch.py)",
}
NO_Q4 = "Question 4 (demo_scratch.py) is not in this kit"
# Settings that name a run rather than change it: left out of the ablation's differences.
NOT_SETTINGS = ("exp_name",)
# How many test images the rebuilt flower model must classify as the run did (test_flower.txt).
CHECK_IMAGES = 16
TIE_TOLERANCE = 0.05  # logit gap, in logit standard deviations, still counted as a tie


# ====================================================================== run folders


@dataclass
class Run:
    """A run folder: its path, the name shown in figures, its config.yaml and its kind."""

    path: Path
    name: str
    config: dict
    kind: str  # flower | pixmo | scratch

    @property
    def log_text(self) -> str:
        path = self.path / LOG_FILE
        return path.read_text(errors="replace") if path.is_file() else ""

    @property
    def summary(self) -> dict | None:
        """Question 4's summary.json (None when absent or unreadable)."""
        try:
            data = json.loads((self.path / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def synthetic(self) -> bool:
        """Whether the run trained on generated data: summary.json, else config.yaml's
        ``synthetic_data``, else the SYNTHETIC DATA banner the demos write into train.log."""
        summary = self.summary
        if summary is not None and "synthetic" in summary:
            return bool(summary["synthetic"])
        if "synthetic_data" in self.config:
            return bool(self.config["synthetic_data"])
        return "SYNTHETIC DATA" in self.log_text


def run_kind(config: dict) -> str | None:
    """Which demo wrote a config.yaml, from the keys only that demo has."""
    if "encoder_name" in config and "method" in config:
        return "flower"
    if "tokens_side" in config:
        return "pixmo"
    if "dataset" in config and "patch_size" in config:
        return "scratch"
    return None


def open_run(path: str | Path) -> Run:
    """Check that ``path`` is a run folder of one of the demos and read its config.yaml."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run folder {path} does not exist; give the --output_dir of a demo run")
    if not path.is_dir():
        raise UserError(f"{path} is a file; give a run folder (the --output_dir of a demo run)")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(
            f"{path} is not a run folder (no {CONFIG_FILE}); give the --output_dir of a "
            "demo_flower.py, demo_pixmo.py or demo_scratch.py run"
        )
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        config = None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a YAML mapping of settings; was it edited by hand?")
    kind = run_kind(config)
    if kind is None:
        raise UserError(
            f"{config_path} was not written by demo_flower.py, demo_pixmo.py or demo_scratch.py"
        )
    return Run(path, path.resolve().name, config, kind)


def open_runs(paths: list[str]) -> list[Run]:
    """Several runs; names are folder names, or the paths as given when those collide."""
    runs = [open_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        for run, given in zip(runs, paths):
            run.name = given.rstrip("/")
    return runs


# ====================================================================== TensorBoard scalars


def read_scalars(run: Run) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run as {tag: [(step, value), ...]} sorted by step (step = epoch).

    Read with TensorBoard's own ``EventAccumulator`` (which also drops the events a resumed
    run replaced). Raises UserError when the run has no finished epoch yet.
    """
    folder = run.path / "tensorboard"
    if not folder.is_dir() or not any(folder.glob("events.out.tfevents.*")):
        raise UserError(
            f"{run.path} has no TensorBoard events yet (no {folder.name}/ files); "
            "wait until its first epoch has finished"
        )
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
        raise UserError(
            f"{run.path} has no finished epoch yet (no val_acc in tensorboard/); "
            "wait until its first epoch has finished"
        )
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
    (Question 4), or the 'synthetic test accuracy' line the flower and PixMo demos log when
    the test labels are known (synthetic data only; real test labels are hidden)."""
    summary = run.summary
    if summary and isinstance(summary.get("test_acc"), (int, float)):
        return float(summary["test_acc"])
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


# ====================================================================== output files


def _check_out(out: str, suffixes: tuple[str, ...] | None) -> Path:
    path = Path(out)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"--out {out}: give a file name ending in {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise UserError(f"--out {out}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    return path


def save_figure(fig, out: str) -> Path:
    """Save a matplotlib figure atomically: PNG at ``DPI``, or vector PDF/SVG."""
    import matplotlib.pyplot as plt

    path = _check_out(out, FIGURE_SUFFIXES)
    fmt = path.suffix.lower()[1:]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=fmt, dpi=DPI)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {path}")
    return path


def _wrap(fig, text: str, fontsize: float) -> str:
    """``text`` broken into lines that fit the figure's width (titles must not be cut off)."""
    import textwrap

    chars = int(fig.get_figwidth() * 72 / (0.55 * fontsize))  # ~0.55 em per character
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def _pyplot():
    """pyplot on the Agg backend: files only, no window (works over ssh and on Slurm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ====================================================================== curves

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
    plt = _pyplot()
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


# ====================================================================== ablation


def _fmt_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    return str(value)


def config_changes(base: dict, other: dict) -> list[tuple[str, str, str]]:
    """[(key, base value, run value)] for every setting that differs, sorted by key."""
    keys = sorted((set(base) | set(other)) - set(NOT_SETTINGS))
    return [
        (k, _fmt_value(base.get(k)), _fmt_value(other.get(k)))
        for k in keys
        if base.get(k) != other.get(k)
    ]


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class AblationRow:
    name: str
    changes: list[tuple[str, str, str]]
    is_base: bool
    best_val_acc: float
    best_epoch: int
    test_acc: float | None
    synthetic: bool
    seconds: float | None
    status: str


def ablation_rows(runs: list[Run], base: Run) -> list[AblationRow]:
    """The table's rows: the base run first, then the others in the order given."""
    rows = []
    ordered = [base] + [r for r in runs if r.path.resolve() != base.path.resolve()]
    for run in ordered:
        if run.kind != base.kind:
            raise UserError(
                f"{run.path} is {KIND_NAMES[run.kind]} but the base {base.path} is "
                f"{KIND_NAMES[base.kind]}; an ablation compares runs of one demo"
            )
        scalars = read_scalars(run)
        val = scalars["val_acc"]
        best = max(range(len(val)), key=lambda k: (val[k][1], -k))  # the first best epoch
        rows.append(
            AblationRow(
                name=run.name,
                changes=config_changes(base.config, run.config),
                is_base=run is base,
                best_val_acc=val[best][1],
                best_epoch=val[best][0],
                test_acc=test_accuracy(run, scalars),
                synthetic=run.synthetic,
                seconds=training_seconds(run),
                status=run_status(run, scalars)[1],
            )
        )
    return rows


TABLE_HEADER = ("run", "changes from the base", "best val acc", "epoch", "test acc", "training time", "status")  # fmt: skip


def _row_cells(row: AblationRow, arrow: str) -> list[str]:
    changes = (
        "(base)" if row.is_base else "; ".join(f"{k} {a} {arrow} {b}" for k, a, b in row.changes)
    )
    test = "-" if row.test_acc is None else f"{row.test_acc:.4f}"
    if row.test_acc is not None and row.synthetic:
        test += " (synthetic)"
    name = row.name + (" [synthetic data]" if row.synthetic else "")
    return [name, changes or "(same settings)", f"{row.best_val_acc:.4f}", str(row.best_epoch), test, _fmt_seconds(row.seconds), row.status]  # fmt: skip


def ablation_markdown(rows: list[AblationRow]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(TABLE_HEADER), "| " + " | ".join("---" for _ in TABLE_HEADER) + " |"]
    lines += [line(_row_cells(row, "->")) for row in rows]
    if any(row.synthetic for row in rows):
        lines.append("")
        lines.append("Runs marked [synthetic data] trained on GENERATED data: not real results.")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "&%$#_{}":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def ablation_latex(rows: list[AblationRow]) -> str:
    """A booktabs table (\\usepackage{booktabs}); changes are arrows, e.g. lr 0.01 -> 0.001."""
    arrow = "@@ARROW@@"  # survives escaping, then becomes a math arrow
    body = [
        " & ".join(
            _latex_escape(c).replace(arrow, r"$\rightarrow$") for c in _row_cells(row, arrow)
        )
        + r" \\"
        for row in rows
    ]
    lines = [
        "% made by report.py ablation; needs \\usepackage{booktabs}",
        r"\begin{tabular}{llrrlll}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in TABLE_HEADER) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if any(row.synthetic for row in rows):
        lines.append("% runs marked [synthetic data] trained on GENERATED data: not real results")
    return "\n".join(lines) + "\n"


def write_ablation(runs: list[Run], base: Run, out: str | None, fmt: str) -> str:
    path = _check_out(out, None) if out else None
    rows = ablation_rows(runs, base)
    text = ablation_latex(rows) if fmt == "latex" else ablation_markdown(rows)
    print(text, end="")
    if path is not None:
        from training_utils import atomic_write_text

        atomic_write_text(path, text)
        print(f"wrote {path}")
    return text


# ====================================================================== ViT runs: model and images


def _demo_scratch():
    """Question 4's module, imported only when a Question 4 run or dataset is asked for."""
    try:
        import demo_scratch
    except ModuleNotFoundError as err:
        if err.name == "demo_scratch":
            raise UserError(NO_Q4) from None
        raise
    return demo_scratch


@dataclass
class VitRun:
    """A ViT rebuilt from a run, ready to look inside."""

    run: Run
    model: Any  # nn.Module on the CPU, eval mode
    num_prompts: int  # prompt tokens between CLS and the patches (VPT), else 0
    grid: int  # patches per side
    note: str  # where the weights came from, for the figure and the terminal
    cfg: Any = None  # the run's config object (FlowerConfig or ScratchConfig)


def _flower_config(run: Run):
    import demo_flower
    from experiment_config import ConfigError, apply_overrides

    keys = {k: v for k, v in run.config.items() if k not in ("exp_name", "synthetic_data")}
    try:
        return apply_overrides(demo_flower.FlowerConfig(), keys, where=str(run.path / CONFIG_FILE))
    except ConfigError as err:
        raise UserError(f"{err} (a run of another version of the kit?)") from None


def _random_backbone(run: Run, cfg) -> bool:
    """Whether the run's frozen backbone was random: the demo logs it in train.log."""
    if cfg.encoder_name != "vit_b_32":
        return True  # only ViT-B/32 has pretrained weights
    return "RANDOMLY initialised" in run.log_text


def _build_flower_vit(run: Run) -> tuple[Any, Any, str]:
    """The run's model exactly as demo_flower built it, with best.pt loaded: (model, cfg, note).

    best.pt holds only what trained (prompts and head, or everything for method 'full'); the
    frozen rest is the ImageNet weights or, without them, the random initialisation that
    demo_flower drew right after ``seed_everything(cfg.seed)``, which is drawn again here.
    """
    import torch

    import demo_flower
    from custom_dataset import FLOWER_CLASSES
    from fine_tune import ViTLinear, ViTPrompt
    from trainer import load_trainable_state
    from training_utils import seed_everything

    cfg = _flower_config(run)
    best_path = run.path / BEST_FILE
    if not best_path.is_file():
        raise UserError(
            f"{run.path} has no {BEST_FILE} yet; wait until its first epoch has finished"
        )
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    notes = []
    seed_everything(cfg.seed)  # as demo_flower.train does right before build_model
    if cfg.method == "full" or _random_backbone(run, cfg):
        # Same constructor calls as demo_flower.build_model, without weights (no file lookup
        # or download, which draw no random numbers, so the random weights are the same).
        common = dict(
            encoder_name=cfg.encoder_name, weights=None, image_size=cfg.image_size, log=notes.append
        )
        if cfg.method == "vpt":
            model = ViTPrompt(
                FLOWER_CLASSES,
                num_prompts=cfg.num_prompts,
                deep=cfg.deep_prompts,
                prompt_dropout=cfg.prompt_dropout,
                **common,
            )
        else:
            model = ViTLinear(FLOWER_CLASSES, train_backbone=cfg.method == "full", **common)
        if cfg.method == "full":
            note = "every weight from best.pt (full fine-tuning)"
        else:
            note = f"frozen RANDOM backbone redrawn from seed {cfg.seed}, trained part from best.pt"
    else:
        model = demo_flower.build_model(cfg, notes.append)
        if model.backbone.weights_source.kind == "random":
            raise UserError(
                f"{run.path} was trained on the ImageNet ViT-B/32 weights, which are not on this "
                f"machine; put {cfg.weights or 'vit_b_32-d86f8d99.pth'} where the run found it"
            )
        note = "ImageNet ViT-B/32 backbone, trained part from best.pt"
    try:
        load_trainable_state(model, state["model"])
    except (RuntimeError, KeyError) as err:
        raise UserError(f"{best_path} does not fit the model of its config.yaml ({err})") from None
    model.eval()
    return model, cfg, note


def _flower_data_dir(run: Run, cfg, data_dir: str | None) -> Path:
    folder = Path(data_dir or cfg.data_dir)
    if not folder.is_dir():
        where = "--data_dir" if data_dir else f"the run's data folder (data_dir in {CONFIG_FILE})"
        raise UserError(
            f"{where} {folder} is not here; run from the folder you trained in or pass "
            "--data_dir with the flower data (train/val/test_data.pkl)"
        )
    return folder


def _flower_test_images(folder: Path, cfg, count: int):
    """The first ``count`` test images as the model saw them: resized, centre-cropped uint8
    (N, 3, S, S), with their labels (N,) (-1 where the test labels are hidden)."""
    import torch

    from custom_dataset import eval_store, load_flower_split

    images, labels = load_flower_split(folder, "test")
    count = min(count, len(images))
    store = eval_store(images[:count], cfg.resize_size, cfg.image_size)
    return store, torch.from_numpy(labels[:count])


def _flower_inputs(images):
    from gpu_transforms import normalize

    return normalize(images)  # ImageNet mean/std, as the demo's batch sources do


def check_reproduced(run: Run, model, inputs, filename: str) -> str:
    """Compare the rebuilt model's predictions with the run's own prediction file (written
    from best.pt by the demo); refuse to draw when they disagree: the frozen backbone then
    is not the one the run trained with. Returns a line saying what was checked."""
    import torch

    path = run.path / filename
    if not path.is_file():
        return f"not checked against {filename} (the run has not written it yet)"
    saved = torch.tensor(read_predictions(path)[0][: len(inputs)])  # skips a synthetic marker
    with torch.no_grad():
        logits = model(inputs[: len(saved)]).float()  # (K, classes)
    # A GPU run predicted under bf16 autocast: a near-tie may fall the other way here (on the
    # smoke run, 3% of the test images, all within 0.02 logit std of the top). A class whose
    # logit is that close to the top counts as agreeing; with a wrong backbone about 4% do.
    gap = logits.max(1).values - logits.gather(1, saved[:, None])[:, 0]
    agree = int((gap <= TIE_TOLERANCE * logits.std(1)).sum())
    if agree < 0.9 * len(saved):
        raise UserError(
            f"the model rebuilt from {run.path} predicts only {agree} of {len(saved)} test "
            f"images as its {filename} does: its frozen backbone cannot be reproduced here "
            "(other weights or another torch version), so nothing is drawn"
        )
    return f"checked: {agree} of {len(saved)} test predictions agree with {filename}"


def load_vit_run(run: Run, data_dir: str | None = None, check: bool | None = True) -> VitRun:
    """Rebuild the ViT of a flower or Question 4 run (UserError for any other run).

    ``check``: compare a flower model's predictions with the run's test_flower.txt (True),
    not at all (False), or only when the data folder is here (None)."""
    if run.kind == "pixmo":
        raise UserError(
            f"{run.path} is {KIND_NAMES['pixmo']}; attention maps and position embeddings need "
            "a ViT run: a flower run (Question 2) or a Question 4 vit / diff_vit run"
        )
    if run.kind == "scratch":
        demo_scratch = _demo_scratch()
        cfg, model = demo_scratch.load_run_model(run.path)
        if getattr(cfg, "model", None) not in ("vit", "diff_vit"):
            raise UserError(
                f"{run.path} trained a '{cfg.model}', not a transformer; give a vit or diff_vit run"
            )
        model.eval()
        return VitRun(run, model, 0, int(model.patch_grid), "every weight from best.pt", cfg)
    model, cfg, note = _build_flower_vit(run)
    if check is None and not Path(data_dir or cfg.data_dir).is_dir():
        note += "; not checked against test_flower.txt (no data folder: pass --data_dir)"
    elif check is not False and cfg.method != "full":
        folder = _flower_data_dir(run, cfg, data_dir)
        images, _ = _flower_test_images(folder, cfg, CHECK_IMAGES)
        note += "; " + check_reproduced(run, model, _flower_inputs(images), "test_flower.txt")
    prompts = model.prompts.shape[1] if hasattr(model, "prompts") else 0
    return VitRun(run, model, prompts, cfg.image_size // model.backbone.patch_size, note, cfg)


# ====================================================================== attention maps


def vit_attentions(vit: VitRun, inputs):
    """(logits (B, C), list of L attention maps (B, H, T, T)) of the rebuilt model."""
    import torch

    model = vit.model
    with torch.no_grad():
        if vit.run.kind == "scratch" or hasattr(model, "prompts"):
            return model(inputs, return_attention=True)
        features, attentions = model.backbone(inputs, None, True)  # ViTLinear: the backbone's
        return model.head(features), attentions


def rollout_of(attentions, num_prompts: int):
    """Attention rollout of the CLS token over the patches, by the kit's own
    ``transformer_utils.attention_rollout`` (your exercise 1.10), over the whole sequence
    [CLS, prompts, patches]; the prompt columns are then dropped. Returns (B, N)."""
    import transformer_utils

    try:
        _, cls_map = transformer_utils.attention_rollout(attentions)
    except NotImplementedError:
        raise UserError(
            "transformer_utils.attention_rollout is not implemented yet (exercise 1.10); "
            "write it, or drop --rollout"
        ) from None
    return cls_map[:, num_prompts:]  # cls_map has no CLS column: prompts come first


def attention_maps(
    run_dir: str | Path,
    images: int = 4,
    data_dir: str | None = None,
    rollout: bool = False,
    check: bool = True,
) -> dict:
    """The maps the ``attention`` figure draws, for the first ``images`` test images.

    Returns a dict of tensors (G = patches per side, H heads, L layers):
        images (B, C, S, S) uint8, labels (B,), preds (B,), grid G, num_prompts P,
        attentions: the model's L maps (B, H, T, T), T = 1 + P + G*G,
        last_heads (B, H, G, G): CLS -> patch attention of each head of the last layer,
        last_mean (B, G, G): their mean, layer_means (B, L, G, G): the head mean per layer,
        rollout (B, G, G) or None, run (the Run), note (where the weights came from),
        class_names (list or None), synthetic (bool).
    """
    import torch

    run = open_run(run_dir)
    vit = load_vit_run(run, data_dir, check=check)
    if images < 1:
        raise UserError(f"--images {images}: give at least 1")
    class_names = None
    if run.kind == "scratch":
        demo_scratch = _demo_scratch()
        import scratch_data

        cfg = vit.cfg
        pixels, labels, synthetic = demo_scratch.load_split(cfg, "test", data_dir)
        pixels, labels = pixels[:images], labels[:images]
        inputs = pixels.float() / 255.0  # Question 4 models normalise inside
        class_names = scratch_data.CLASS_NAMES.get(cfg.dataset)
    else:
        cfg = vit.cfg
        pixels, labels = _flower_test_images(_flower_data_dir(run, cfg, data_dir), cfg, images)
        inputs = _flower_inputs(pixels)
        synthetic = run.synthetic
    logits, attentions = vit_attentions(vit, inputs)
    attentions = [a.float() for a in attentions]
    g, p = vit.grid, vit.num_prompts
    cls_to_patches = [a[:, :, 0, 1 + p :] for a in attentions]  # (B, H, G*G) per layer
    n_patches = cls_to_patches[0].shape[-1]
    if n_patches != g * g:
        raise UserError(f"the model's attention covers {n_patches} patches, not {g}x{g}")
    b = inputs.shape[0]
    last_heads = cls_to_patches[-1].reshape(b, -1, g, g)
    maps = dict(
        images=pixels,
        labels=labels,
        preds=logits.argmax(1),
        grid=g,
        num_prompts=p,
        attentions=attentions,
        last_heads=last_heads,
        last_mean=last_heads.mean(1),
        layer_means=torch.stack([m.mean(1) for m in cls_to_patches], 1).reshape(b, -1, g, g),
        rollout=rollout_of(attentions, p).reshape(b, g, g) if rollout else None,
        run=run,
        note=vit.note,
        class_names=class_names,
        synthetic=synthetic,
    )
    return maps


def _show_image(ax, image):
    """(C, H, W) uint8 tensor on an axis (greyscale when C == 1)."""
    array = image.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(array)


def _overlay(ax, image, heat, title):
    """The image with a G x G map over it, one flat square per patch, scaled to its maximum."""
    _show_image(ax, image)
    h, w = image.shape[1:]
    heat = heat / heat.max().clamp_min(1e-12)
    mappable = ax.imshow(
        heat.numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
        extent=(0, w, h, 0), interpolation="nearest",
    )  # fmt: skip
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable


def attention_layout(heads: int, layers: int) -> tuple[int, int]:
    """Columns of the figure: row 1 image + heads + mean, row 2 rollout/blank + layers."""
    return max(heads + 2, layers + 1), 2


def attention_figsize(images: int, heads: int, layers: int) -> tuple[float, float]:
    cols, rows_per_image = attention_layout(heads, layers)
    return (max(1.35 * cols + 1.0, 8.0), 1.6 * rows_per_image * images + 1.0)


def _class_name(names, label: int) -> str:
    if label < 0:
        return "hidden"
    return names[label] if names and label < len(names) else str(label)


def draw_attention(maps: dict, out: str) -> Path:
    plt = _pyplot()
    b, heads = maps["last_heads"].shape[:2]
    layers = maps["layer_means"].shape[1]
    cols, per = attention_layout(heads, layers)
    fig, axes = plt.subplots(
        per * b,
        cols,
        figsize=attention_figsize(b, heads, layers),
        layout="constrained",
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    mappable = None
    names = maps["class_names"]
    for i in range(b):
        image = maps["images"][i]
        top, bottom = axes[per * i], axes[per * i + 1]
        ax = top[0]
        ax.axis("on")
        _show_image(ax, image)
        ax.set_xticks([])
        ax.set_yticks([])
        truth = _class_name(names, int(maps["labels"][i]))
        guess = _class_name(names, int(maps["preds"][i]))
        ax.set_title(f"test image {i + 1}\nclass {truth}, predicted {guess}", fontsize=8)
        for h in range(heads):
            top[1 + h].axis("on")
            mappable = _overlay(top[1 + h], image, maps["last_heads"][i, h], f"head {h + 1}")  # fmt: skip
        top[heads + 1].axis("on")
        _overlay(top[heads + 1], image, maps["last_mean"][i], "mean of heads")
        if maps["rollout"] is not None:
            bottom[0].axis("on")
            _overlay(bottom[0], image, maps["rollout"][i], "rollout")
        for layer in range(layers):
            bottom[1 + layer].axis("on")
            _overlay(bottom[1 + layer], image, maps["layer_means"][i, layer], f"layer {layer + 1}")  # fmt: skip
    fig.colorbar(
        mappable,
        ax=axes,
        shrink=min(0.5, 4.0 / fig.get_figheight()),
        label="[CLS] attention / its maximum",
    )
    run = maps["run"]
    prompts = f", {maps['num_prompts']} prompt tokens left out" if maps["num_prompts"] else ""
    title = (
        f"[CLS]-to-patch attention of run {run.name} ({maps['grid']}x{maps['grid']} patches"
        f"{prompts}; test images)" + (", SYNTHETIC DATA" if maps["synthetic"] else "")
    )
    rows = (
        "First row of each image: every head of the last layer, and their mean. Second row: "
        + ("the attention rollout, then " if maps["rollout"] is not None else "")
        + "the mean over the heads of each layer."
    )
    fig.suptitle(_wrap(fig, f"{title}. {rows}\n{maps['note']}", 10), fontsize=10)
    return save_figure(fig, out)


# ====================================================================== position embeddings


def learned_position_embeddings(run_dir: str | Path, data_dir: str | None = None) -> dict:
    """The run's learned position embeddings on the patch grid: {'embeddings' (G, G, D),
    'similarity' (G, G, G, G) cosine similarity of patch (i, j) with patch (k, l), 'run',
    'note'}. One-line UserError when the model has nothing learned to show."""
    import torch
    import torch.nn.functional as F

    run = open_run(run_dir)
    if run.kind == "scratch":
        kind = run.config.get("pos_embedding")
        why = {
            "sinusoidal": "fixed sine and cosine waves of the position: nothing is learned",
            "none": "no position embedding at all: the model sees a bag of patches",
        }
        if kind in why:
            raise UserError(
                f"{run.path} uses pos_embedding '{kind}', {why[kind]}; give a run with "
                "learned1d or learned2d"
            )
    vit = load_vit_run(run, data_dir, check=None)
    with torch.no_grad():
        if run.kind == "scratch":
            pe = vit.model.learned_position_embeddings()
            if pe is None:
                raise UserError(f"{run.path}: its model has no learned position embeddings")
            note = f"pos_embedding: {run.config.get('pos_embedding')}, learned in this run"
        else:
            pos = vit.model.backbone.encoder.pos_embedding  # (1, 1 + G*G, D), CLS first
            pe = pos[0, 1:].reshape(vit.grid, vit.grid, -1)
            cfg = _flower_config(run)
            if cfg.method == "full":
                note = "learned in ImageNet pre-training, fine-tuned in this run"
            elif _random_backbone(run, cfg):
                note = (
                    "RANDOM, never trained (frozen random backbone): no structure to expect; "
                    "a run with the ImageNet weights shows learned ones"
                )
            else:
                note = "learned in ImageNet pre-training (frozen in this run)"
        g = pe.shape[0]
        flat = F.normalize(pe.reshape(g * g, -1).float(), dim=1)
        similarity = (flat @ flat.T).reshape(g, g, g, g)
    return dict(embeddings=pe, similarity=similarity, run=run, note=note + f"; {vit.note}")


def posemb_figsize(grid: int) -> tuple[float, float]:
    side = min(max(1.1 * grid, 6.5), 11.0)
    return (side + 1.6, side + 1.4)


def draw_posemb(emb: dict, out: str) -> Path:
    plt = _pyplot()
    sim = emb["similarity"]
    g = sim.shape[0]
    fig, axes = plt.subplots(g, g, figsize=posemb_figsize(g), layout="constrained", squeeze=False)
    mappable = None
    for i in range(g):
        for j in range(g):
            ax = axes[i][j]
            mappable = ax.imshow(sim[i, j].numpy(), cmap="viridis", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == g - 1:
                ax.set_xlabel(str(j + 1), fontsize=8)
            if j == 0:
                ax.set_ylabel(str(i + 1), fontsize=8)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.colorbar(mappable, ax=axes, shrink=0.6, label="cosine similarity")
    title = (
        f"Position embedding similarity of run {emb['run'].name}: each small map compares the "
        f"embedding of one patch with those of all {g}x{g} patches.\n{emb['note']}"
    )
    fig.suptitle(_wrap(fig, title, 9), fontsize=9)
    return save_figure(fig, out)


# ====================================================================== dataset preview

PREVIEW_ROWS, PREVIEW_COLS = 4, 4
PREVIEW_FIGSIZE = (10.0, 11.0)


def _default_data_dir(default: str, synthetic_dir: str, data_dir: str | None, what: str) -> Path:
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise UserError(f"--data_dir {data_dir} is not a folder; give the {what} data folder")
        return Path(data_dir)
    for folder in (default, synthetic_dir):
        if Path(folder).is_dir():
            return Path(folder)
    raise UserError(
        f"no {what} data in {default}/ or {synthetic_dir}/; pass --data_dir, or run the "
        "demo's smoke preset once to generate synthetic data"
    )


def preview_examples(dataset: str, data_dir: str | None = None, scratch_dataset: str | None = None):
    """(images [(H, W, 3) or (H, W) uint8 arrays], titles, points or None, synthetic, source)."""
    count = PREVIEW_ROWS * PREVIEW_COLS
    if dataset == "flower":
        import demo_flower
        from custom_dataset import load_flower_split

        folder = _default_data_dir(demo_flower.DEFAULT_DATA_DIR, demo_flower.SYNTHETIC_DATA_DIR, data_dir, "flower")  # fmt: skip
        images, labels = load_flower_split(folder, "train")
        picked, seen = [], set()
        for i, label in enumerate(labels):  # one image of each of the first classes: variety
            if int(label) not in seen:
                seen.add(int(label))
                picked.append(i)
            if len(picked) == count:
                break
        synthetic = (folder / "SYNTHETIC_DATA_README.txt").is_file()
        titles = [f"class {int(labels[i])}" for i in picked]
        return [images[i] for i in picked], titles, None, synthetic, str(folder)
    if dataset == "pixmo":
        import demo_pixmo
        import synthetic_pixmo
        from custom_dataset import PixmoDataError, check_pixmo_example, load_pixmo_split

        folder = _default_data_dir(demo_pixmo.DEFAULT_DATA_DIR, demo_pixmo.SYNTHETIC_DATA_DIR, data_dir, "PixMo")  # fmt: skip
        synthetic = synthetic_pixmo.read_info(folder) is not None
        try:
            data = load_pixmo_split(folder, "train")[:count]
            examples = [check_pixmo_example(e, "train", i, str(folder)) for i, e in enumerate(data)]
        except PixmoDataError as err:
            raise UserError(str(err)) from None
        name = synthetic_pixmo.class_name if synthetic else (lambda label: f"class {label}")
        titles = [name(label) for _, _, label in examples]
        return [e[0] for e in examples], titles, [e[1] for e in examples], synthetic, str(folder)
    demo_scratch = _demo_scratch()
    import scratch_data

    cfg = demo_scratch.ScratchConfig()
    if scratch_dataset and scratch_dataset not in scratch_data.CLASS_NAMES:
        known = ", ".join(sorted(scratch_data.CLASS_NAMES))
        raise UserError(f"--dataset {scratch_dataset} is unknown; choose one of {known}")
    if scratch_dataset:
        cfg = dataclasses.replace(cfg, dataset=scratch_dataset)
    images, labels, synthetic = demo_scratch.load_split(cfg, "train", data_dir)
    names = scratch_data.CLASS_NAMES.get(cfg.dataset)
    arrays = [im.permute(1, 2, 0).squeeze(-1).numpy() for im in images[:count]]
    titles = [_class_name(names, int(label)) for label in labels[:count]]
    return arrays, titles, None, synthetic, cfg.dataset


def draw_preview(dataset: str, out: str, data_dir: str | None = None, scratch_dataset=None) -> Path:
    images, titles, points, synthetic, source = preview_examples(dataset, data_dir, scratch_dataset)
    plt = _pyplot()
    fig, axes = plt.subplots(PREVIEW_ROWS, PREVIEW_COLS, figsize=PREVIEW_FIGSIZE, layout="constrained")  # fmt: skip
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(images):
            ax.axis("off")
            continue
        image = images[k]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(titles[k], fontsize=9)
        if points is not None:
            x, y = points[k]
            ax.plot([x], [y], "o", ms=9, mfc="none", mec="white", mew=2.5, label="the point")
            ax.plot([x], [y], "+", ms=9, color="red", mew=1.5)
        h, w = image.shape[:2]
        ax.set_xlabel(f"{w} x {h} px", fontsize=7)
    what = {"flower": "Flowers (Question 2)", "pixmo": "PixMo points (Question 3)"}.get(
        dataset, f"Question 4: {source}"
    )
    fig.suptitle(
        f"{what}: training images with their class"
        + (", the point drawn as a circle" if points is not None else "")
        + ("\nSYNTHETIC data (generated, not the real dataset)" if synthetic else f"\n{source}")
    )
    return save_figure(fig, out)


# ====================================================================== command line


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that say where the help is."""

    def error(self, message):
        print(f"error: {message}; see python {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="report.py",
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fig_out = dict(required=True, help="output file: .png (150 dpi), .pdf or .svg (vector)")

    p = sub.add_parser("curves", help="training/validation loss and accuracy per epoch")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (--output_dir of a demo)")
    p.add_argument("--out", **fig_out)

    p = sub.add_parser("ablation", help="table: what each run changed and what it reached")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, one row each")
    p.add_argument("--base", required=True, help="the run the others are compared with")
    p.add_argument("--out", help="table file (default: print only)")
    p.add_argument("--format", choices=("markdown", "latex"), default="markdown")

    p = sub.add_parser("attention", help="[CLS] attention maps of a ViT run on test images")
    p.add_argument("--run", required=True, help="a flower run, or a Question 4 vit/diff_vit run")
    p.add_argument("--images", type=int, default=4, help="test images to show (default 4)")
    p.add_argument("--rollout", action="store_true", help="add transformer_utils.attention_rollout")
    p.add_argument("--data_dir", help="data folder (default: the one in the run's config.yaml)")
    p.add_argument("--out", **fig_out)

    p = sub.add_parser("posemb", help="similarity of the learned position embeddings")
    p.add_argument("--run", required=True, help="a flower run, or a Question 4 vit/diff_vit run")
    p.add_argument("--data_dir", help="flower data, to check the rebuilt model (optional)")
    p.add_argument("--out", **fig_out)

    p = sub.add_parser("preview", help="a grid of dataset images with their class")
    p.add_argument("dataset", choices=("flower", "pixmo", "scratch"))
    p.add_argument("--data_dir", help="data folder (default: the demo's, else its synthetic one)")
    p.add_argument("--dataset", dest="scratch_dataset", help="scratch only: which dataset")
    p.add_argument("--out", **fig_out)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "curves":
            _check_out(args.out, FIGURE_SUFFIXES)  # before any slow work
            draw_curves(open_runs(args.runs), args.out)
        elif args.command == "ablation":
            runs = open_runs(args.runs)
            base = open_run(args.base)
            base = next((r for r in runs if r.path.resolve() == base.path.resolve()), base)
            write_ablation(runs, base, args.out, args.format)
        elif args.command == "attention":
            _check_out(args.out, FIGURE_SUFFIXES)
            maps = attention_maps(args.run, args.images, args.data_dir, args.rollout)
            print(f"{maps['run'].name}: {maps['note']}")
            draw_attention(maps, args.out)
        elif args.command == "posemb":
            _check_out(args.out, FIGURE_SUFFIXES)
            draw_posemb(learned_position_embeddings(args.run, args.data_dir), args.out)
        elif args.command == "preview":
            _check_out(args.out, FIGURE_SUFFIXES)
            draw_preview(args.dataset, args.out, args.data_dir, args.scratch_dataset)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
