"""A finished (or stopped) run folder, read back: its settings, its model, its test images.

The one way the kit opens a run after training, shared by report.py, the attack command and the
demos' tools:

- ``read_run(path)`` -> ``Run``: the folder's config.yaml, which demo wrote it (``kind``),
  its log, its summary and whether its data was synthetic.
- ``load_trained_model(run)`` -> ``TrainedModel``: the model rebuilt from config.yaml with
  the weights of best.pt (flower runs: checked against the run's own test_flower.txt),
  on the CPU in eval mode.
- ``test_images(trained)`` -> ``TestImages``: the run's test images as the model takes them.

A run of a question that is not in this kit, a folder that is not a run, or a run without
best.pt yet is a one-line ``UserError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from kit.errors import UserError
from kit.runs import BEST_FILE, CONFIG_FILE, LOG_FILE

SUMMARY_FILE = "summary.json"  # Question 4's and 5's end-of-run summary
KIND_NAMES = {
    "flower": "a flower run (Question 2)",
    "pixmo": "a PixMo run (Question 3)",
    "scratch": "a Question 4 run (training from scratch)",
    "caption": "a captioning run (Question 5)",
}
NOT_IN_KIT = {
    "scratch": "Question 4 (training from scratch) is not in this kit",
    "caption": "Question 5 (captioning) is not in this kit",
}


def demo_script(kind):
    """The demo that trains runs of this kind (demo_<kind>.py at the kit's root)."""
    return f"demo_{kind}.py"


# The test predictions each kind of run writes (one class per line, in test-set order). A
# captioning run's test_captions.txt holds words, not classes: no grader reads it as these.
PREDICTIONS = {
    "flower": "test_flower.txt",
    "pixmo": "test_pixmo.txt",
    "scratch": "test_predictions.txt",
}


class NotTrainedYet(UserError):
    """The run has no finished epoch (or no best.pt) yet: still training, or stopped."""


@dataclass
class Run:
    """A run folder: its path, the name shown in figures, its config.yaml and its kind."""

    path: Path
    name: str
    config: dict
    kind: str  # flower | pixmo | scratch | caption

    @property
    def log_text(self) -> str:
        path = self.path / LOG_FILE
        return path.read_text(errors="replace") if path.is_file() else ""

    @property
    def summary(self) -> dict | None:
        """Question 4's or 5's summary.json (None when absent or unreadable)."""
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

    def not_trained_yet(self, what: str) -> NotTrainedYet:
        """The error for a run that lacks ``what`` because no epoch has finished: wait if it
        is still training; if it stopped, the command that continues it."""
        command = (
            f"python {demo_script(self.kind)} --exp_name "
            f"{self.config.get('exp_name', '<preset>')} --output_dir {self.path} --resume"
        )
        return NotTrainedYet(
            f"{self.path} has no {what} yet: no epoch of it has finished. If it is still "
            f"training, wait for its first epoch; if it stopped, continue it with {command} "
            "(and the other flags it was started with)"
        )


def run_kind(config: dict) -> str | None:
    """Which demo wrote a config.yaml, from the keys only that demo has."""
    if "encoder_name" in config and "method" in config:
        return "flower"
    if "tokens_side" in config:
        return "pixmo"
    if "dataset" in config and "wordvec_dim" in config:
        return "caption"
    if "dataset" in config and "patch_size" in config:
        return "scratch"
    return None


def read_run(path: str | Path) -> Run:
    """Check that ``path`` is a run folder of one of the demos and read its config.yaml."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run folder {path} does not exist; give the --output_dir of a demo run")
    if not path.is_dir():
        raise UserError(f"{path} is a file; give a run folder (the --output_dir of a demo run)")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(
            f"{path} is not a run folder (no {CONFIG_FILE}); give the --output_dir of a demo's run"
        )
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        config = None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a YAML mapping of settings; was it edited by hand?")
    kind = run_kind(config)
    if kind is None:
        raise UserError(f"{config_path} was not written by one of the kit's demos")
    return Run(path, path.resolve().name, config, kind)


def read_runs(paths: list[str]) -> list[Run]:
    """Several runs; names are folder names, or the paths as given when those collide."""
    runs = [read_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        for run, given in zip(runs, paths):
            run.name = given.rstrip("/")
    return runs


def scratch_recipe():
    """Question 4's recipe, imported only when a Question 4 run or dataset is asked for (a
    course's release may not have it)."""
    try:
        from kit.scratch import recipe
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("kit.scratch"):
            raise UserError(NOT_IN_KIT["scratch"]) from None
        raise
    return recipe


def caption_recipe():
    """Question 5's recipe, imported only when a captioning run is asked for."""
    try:
        from kit.caption import recipe
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("kit.caption"):
            raise UserError(NOT_IN_KIT["caption"]) from None
        raise
    return recipe


@dataclass
class TrainedModel:
    """A run's model rebuilt from its config.yaml with the weights of best.pt."""

    run: Run
    cfg: Any  # the run's config object (FlowerConfig or ScratchConfig)
    model: torch.nn.Module  # on the CPU, eval mode
    note: str  # where the weights came from (for figures and the terminal)


def load_trained_model(
    run: Run | str | Path, data_dir: str | None = None, check: bool | None = True
) -> TrainedModel:
    """The model of a flower or Question 4 run (UserError for a PixMo run).

    ``check`` (flower runs, whose frozen backbone is rebuilt rather than stored): compare the
    model's predictions with the run's test_flower.txt (True), not at all (False), or only
    when the data folder is here (None)."""
    if not isinstance(run, Run):
        run = read_run(run)
    if not (run.path / BEST_FILE).is_file():
        raise run.not_trained_yet(BEST_FILE)
    if run.kind == "scratch":
        cfg, model = scratch_recipe().load_run_model(run.path)
        return TrainedModel(run, cfg, model.eval(), "every weight from best.pt")
    if run.kind != "flower":
        raise UserError(
            f"{run.path} is {KIND_NAMES[run.kind]}; its model cannot be rebuilt here: give a "
            "flower run (Question 2) or a Question 4 run"
        )
    from kit.flower import recipe

    cfg = recipe.config_of_run(run.path, run.config)
    model, note = recipe.rebuild_trained_model(run.path, cfg, run.log_text)
    if check is None and not Path(data_dir or cfg.data_dir).is_dir():
        note += "; not checked against test_flower.txt (no data folder: pass --data_dir)"
    elif check is not False and cfg.method != "full":
        folder = recipe.run_data_dir(cfg, data_dir)
        pixels, _ = recipe.load_test_images(folder, cfg, recipe.CHECK_IMAGES)
        note += "; " + recipe.check_reproduced(run.path, model, recipe.model_inputs(pixels))
    return TrainedModel(run, cfg, model, note)


@dataclass
class TestImages:
    """A run's test images: ``pixels`` uint8 (N, C, H, W) as shown, ``inputs`` what the
    model takes, ``labels`` (N,) (-1 where hidden), and the class names when known."""

    __test__ = False  # a data class, not a test case (pytest collects classes named Test*)
    pixels: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor
    synthetic: bool
    class_names: list[str] | None


def test_images(
    trained: TrainedModel, count: int | None = None, data_dir: str | None = None
) -> TestImages:
    """The first ``count`` (default: all) test images of the run's data, in test-set order."""
    run, cfg = trained.run, trained.cfg
    if run.kind == "scratch":
        recipe = scratch_recipe()
        pixels, labels, synthetic = recipe.load_split(cfg, "test", data_dir)
        if count is not None:
            pixels, labels = pixels[:count], labels[:count]
        names = recipe.datasets.CLASS_NAMES.get(cfg.dataset)
        return TestImages(pixels, pixels.float() / 255.0, labels, synthetic, names)
    from kit.flower import recipe

    folder = recipe.run_data_dir(cfg, data_dir)
    pixels, labels = recipe.load_test_images(folder, cfg, count if count is not None else 10**9)
    return TestImages(pixels, recipe.model_inputs(pixels), labels, run.synthetic, None)
