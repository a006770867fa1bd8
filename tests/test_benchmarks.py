"""The GPU benchmarks execute (CPU tiny mode; their figures are not the GPU targets)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_flower_pipeline  # noqa: E402
import bench_pixmo_pipeline  # noqa: E402
import bench_vit_step  # noqa: E402


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_bench_vit_step_runs_in_tiny_mode(capsys):
    bench_vit_step.main(["--tiny", "--modes", "eager", "--steps", "1", "--warmup", "1"])
    out = capsys.readouterr().out
    assert "ratio ours/torchvision (eager)" in out
    assert set(last_json(out)["results"]) == {"ours/eager", "torchvision/eager"}


def test_bench_flower_pipeline_runs_in_tiny_mode(capsys):
    bench_flower_pipeline.main(["--tiny", "--epochs", "1", "--workers", "0"])
    out = capsys.readouterr().out
    assert "speed-up ours vs original" in out
    assert "PROJECTED" not in out  # both sides ran every epoch
    assert set(last_json(out)["results"]) == {"ours", "original", "speedup_per_epoch"}


def test_bench_pixmo_pipeline_projects_a_shorter_original_run(capsys):
    bench_pixmo_pipeline.main(
        ["--tiny", "--epochs", "2", "--original_epochs", "1", "--workers", "0"]
    )
    out = capsys.readouterr().out
    results = last_json(out)["results"]
    original = results["original"]
    assert original["epochs"] == 1 and "PROJECTED to 2 epochs" in out
    assert original["projected_seconds"] == original["seconds"] * 2
    per_epoch = (original["seconds"] / 1) / (results["ours"]["seconds"] / 2)
    assert results["speedup_per_epoch"] == per_epoch
