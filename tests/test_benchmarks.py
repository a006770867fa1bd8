"""The GPU benchmarks execute (CPU tiny mode; their figures are not the GPU targets)."""

import json
import os
import subprocess
from pathlib import Path

from benchmarks import bench_checkpoint, bench_flower_pipeline, bench_pixmo_pipeline, bench_vit_step


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
