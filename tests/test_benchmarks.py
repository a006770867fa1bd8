"""The GPU benchmarks execute (CPU tiny mode; their figures are not the GPU targets).

The fast tier runs each benchmark's main() in this process, the PixMo pipeline and the
checkpoint benchmark at sizes below their own --tiny mode (a smaller image and data set, a
small model in place of PixMo's ResNet-34); the slow tier (``-m slow``) runs those two as
they are.
"""

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)
from torch import nn

from benchmarks import bench_checkpoint, bench_flower_pipeline, bench_pixmo_pipeline, bench_vit_step


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_bench_vit_step_runs_in_tiny_mode_and_writes_its_summary_as_json(capsys, tmp_path):
    path = tmp_path / "vit.json"
    args = ["--tiny", "--modes", "eager", "--steps", "1", "--warmup", "1", "--json", str(path)]
    printed = bench_vit_step.main(args)
    out = capsys.readouterr().out
    assert "ratio ours/torchvision (eager)" in out
    assert set(last_json(out)["results"]) == {"ours/eager", "torchvision/eager"}
    # gpu_checks.py reads the --json file
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(printed))
    ours, theirs = saved["results"]["ours/eager"], saved["results"]["torchvision/eager"]
    assert saved["ratios"]["eager"]["speed"] == pytest.approx(
        ours["img_per_s"] / theirs["img_per_s"]
    )


def test_bench_flower_pipeline_runs_in_tiny_mode(capsys):
    bench_flower_pipeline.main(["--tiny", "--epochs", "1", "--workers", "0"])
    out = capsys.readouterr().out
    assert "speed-up ours vs original" in out
    assert "PROJECTED" not in out  # both sides ran every epoch
    assert set(last_json(out)["results"]) == {"ours", "original", "speedup_per_epoch"}


def check_pixmo_projection(out):
    results = last_json(out)["results"]
    original = results["original"]
    assert original["epochs"] == 1 and "PROJECTED to 2 epochs" in out
    assert original["projected_seconds"] == original["seconds"] * 2
    per_epoch = (original["seconds"] / 1) / (results["ours"]["seconds"] / 2)
    assert results["speedup_per_epoch"] == per_epoch


def test_bench_pixmo_pipeline_projects_a_shorter_original_run_at_smaller_sizes(capsys, monkeypatch):
    """Both sides of the PixMo pipeline benchmark with the pixmo_demo model (ResNet-34) on 16
    train / 8 val images of 32 px (--tiny: 64 / 32 of 64 px), its ResNet frozen (pixmo_demo
    trains layer4 too: 17.5 M parameters, whose 200 MB checkpoint every epoch and Adam steps
    took most of the time)."""
    recipe, load_data = bench_pixmo_pipeline.recipe, bench_pixmo_pipeline.load_data

    def smaller_recipe(epochs, tiny):
        return dataclasses.replace(recipe(epochs, tiny), image_size=32, trainable_from="none")

    def less_data(*args, **kwargs):
        data, source = load_data(*args, **kwargs)
        return {"train": data["train"][:16], "val": data["val"][:8]}, source

    monkeypatch.setattr(bench_pixmo_pipeline, "recipe", smaller_recipe)
    monkeypatch.setattr(bench_pixmo_pipeline, "load_data", less_data)
    bench_pixmo_pipeline.main(
        ["--tiny", "--epochs", "2", "--original_epochs", "1", "--workers", "0"]
    )
    out = capsys.readouterr().out
    assert "16 train / 8 val images" in out and "32 px inputs" in out
    check_pixmo_projection(out)


@pytest.mark.slow
def test_bench_pixmo_pipeline_projects_a_shorter_original_run(capsys):
    bench_pixmo_pipeline.main(
        ["--tiny", "--epochs", "2", "--original_epochs", "1", "--workers", "0"]
    )
    check_pixmo_projection(capsys.readouterr().out)


class SmallPixmoStandIn(nn.Module):
    """In place of PixMoModel in the fast tier: a few trainable layers and a frozen one."""

    def __init__(self, num_classes):
        super().__init__()
        self.frozen = nn.Conv2d(3, 8, 3).requires_grad_(False)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, images):
        return self.head(self.norm(self.frozen(images)).mean((2, 3)))


def test_bench_checkpoint_times_both_savers_of_a_small_model(capsys, monkeypatch):
    monkeypatch.setattr(bench_checkpoint, "PixMoModel", SmallPixmoStandIn)
    result = bench_checkpoint.main(["--rounds", "2", "--epoch_seconds", "0"])
    assert set(result["median_s"]) == {"sync", "background"}
    assert all(len(times) == 2 for times in result["blocked_s"].values())
    assert 0 < result["bytes"] < 2**20  # the size of the file written: a small model's state
    assert "ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_checkpoint_times_both_savers(capsys):
    result = bench_checkpoint.main(["--rounds", "1", "--epoch_seconds", "0"])
    assert set(result["median_s"]) == {"sync", "background"}
    assert result["bytes"] > 100 * 2**20  # the pixmo_demo state: about 200 MB
    assert "ratio" in capsys.readouterr().out


def test_gpu_check_script_runs_every_part_and_reports_failures(tmp_path):
    """run_gpu_checks.sh goes on after a failing check (PYTHON=false fails them all)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_gpu_checks.sh"
    env = dict(os.environ, PYTHON="false", LOG_DIR=str(tmp_path))
    run = subprocess.run(["bash", script, "flower"], env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert "FAILED: flower_pipeline flower_pipeline_compiled" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flower_pipeline.log",
        "flower_pipeline_compiled.log",
    ]
    usage = subprocess.run(["bash", script, "nope"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
