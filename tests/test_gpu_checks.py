"""benchmarks/gpu_checks.py (`run_gpu_checks.sh quick`) works: the machinery in-process, and
one CPU run of a subset of its parts through the shell entry point.

The whole `quick --cpu` run takes several minutes on a loaded 2-core CPU (about 14 processes
that each import torch, and the tiny PixMo benchmark alone needs a minute of CPU), so the
end-to-end test runs the parts whose code is specific to this script (the resume with
SIGTERM, the DDP worker under torchrun, a pipeline benchmark and its projection); the demo
smoke parts share their parsing with the resume part, and the ViT-step JSON is checked
in-process (tests/test_benchmarks.py, with the benchmark's tiny run).
"""

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from benchmarks import gpu_checks
from benchmarks.gpu_checks import Part, Record
from kit.config import load_preset
from kit.flower.recipe import FlowerConfig
from kit.pixmo.recipe import PixmoConfig

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = ROOT / "benchmarks" / "run_gpu_checks.sh"


def checker(tmp_path, cpu=True):
    out = tmp_path / "out"
    out.mkdir()
    args = argparse.Namespace(
        cpu=cpu, out=str(out), workdir=str(tmp_path / "work"), budget=60.0, jobs=2, min_part_s=1
    )
    return gpu_checks.Checker(args)


def python_part(name, code, limit=20, after=()):
    """A part that runs ``python -c code`` and passes when it exits 0."""

    def run(c, part, rec):
        rc = c.call(part, [sys.executable, "-c", code], rec, rec.until)
        return gpu_checks.verdict(c, part, rc, {"rc": rc}, "")

    return Part(name, 1, limit, limit, run, after)


def test_failures_and_timeouts_are_recorded_and_the_other_parts_still_run(tmp_path):
    def broken(c, part, rec):
        raise KeyError("figure")

    parts = [
        python_part("boom", "print('boom at step 3'); raise SystemExit(3)"),
        python_part("hang", "import time; print('waiting', flush=True); time.sleep(60)", 2),
        Part("bug", 1, 5, 5, broken),
        python_part("fine", "print('fine')"),
        python_part("needs_boom", "print('never runs')", after=("boom",)),
    ]
    c = checker(tmp_path)
    c.records = {p.name: Record() for p in parts}
    c.events = {p.name: threading.Event() for p in parts}
    for p in parts:
        c.run_part(p)
    summary = json.loads((tmp_path / "out" / "gpu_checks.json").read_text())
    got = summary["parts"]
    assert got["boom"]["status"] == "failed" and got["boom"]["reason"] == "exit 3"
    assert "boom at step 3" in got["boom"]["log_tail"]
    assert got["hang"]["status"] == "timeout" and got["hang"]["wall_s"] < 30
    assert "waiting" in got["hang"]["log_tail"]
    assert got["bug"]["status"] == "failed" and "KeyError" in got["bug"]["reason"]
    assert got["fine"] == {**got["fine"], "status": "ok", "figures": {"rc": 0}}
    assert "log_tail" not in got["fine"]
    assert got["needs_boom"]["status"] == "not_run" and "boom" in got["needs_boom"]["reason"]
    assert set(summary["failures"]) == {"boom", "hang", "bug", "needs_boom"}
    log = (tmp_path / "out" / "gpu_checks.log").read_text()
    assert all(f"===== {p.name}: " in log for p in parts)


def test_a_part_that_no_longer_fits_the_budget_is_not_run(tmp_path):
    c = checker(tmp_path)
    c.deadline = c.phase_deadline = c.t0  # budget spent
    part = python_part("late", "print('too late')")
    c.records, c.events = {"late": Record()}, {"late": threading.Event()}
    c.run_part(part)
    rec = c.records["late"]
    assert rec.status == "not_run" and "--parts late" in rec.reason and not rec.commands


@pytest.mark.parametrize("cpu", [False, True])
def test_the_smoke_presets_are_changed_and_the_demos_accept_them(tmp_path, cpu):
    path = tmp_path / "config.yml"
    path.write_text(gpu_checks.smoke_config(cpu))
    machine = ("fp32", False, "cpu") if cpu else ("bf16", True, "cuda")
    smoke = load_preset("flower", "flower_smoke", FlowerConfig, path)
    pixmo = load_preset("pixmo", "pixmo_smoke", PixmoConfig, path)
    for cfg in (smoke, pixmo):
        assert (cfg.precision, cfg.compile, cfg.device) == machine
    resume = load_preset("flower", "gpu_checks_resume", FlowerConfig, path)
    assert resume.epochs > 2 * max(1, smoke.epochs)  # time to SIGTERM it in the middle
    graphs = load_preset("flower", "gpu_checks_graphs", FlowerConfig, path)
    assert graphs.compile_mode == ("default" if cpu else "reduce-overhead")
    original = load_preset("flower", "vit_vpt_deep", FlowerConfig)
    assert load_preset("flower", "vit_vpt_deep", FlowerConfig, path) == original
    if cpu:
        assert (smoke.epochs, pixmo.epochs, pixmo.synthetic_sizes) == (1, 1, [32, 16, 16])


def test_pipeline_figures_are_projected_to_the_full_recipe_and_labelled():
    summary = {
        "device": "cuda",
        "epochs": 10,
        "results": {
            "ours": {"seconds": 12.0, "prep_seconds": 2.0, "final_val_acc": 0.5},
            "original": {"seconds": 60.0, "epochs": 10, "final_val_acc": 0.4, "workers": 8},
            "speedup_per_epoch": 5.0,
        },
    }
    figs = gpu_checks.project(summary, 100)
    assert figs["ours_projected_full_s"] == pytest.approx(2.0 + 10.0 * 100 / 10)
    assert figs["original_projected_full_s"] == pytest.approx(600.0)
    assert figs["speedup_per_epoch"] == 5.0 and figs["device"] == "cuda"
    assert figs["projection"].startswith("PROJECTED to the 100-epoch recipe")


def test_targets_are_judged_on_a_gpu_only(tmp_path):
    c = checker(tmp_path, cpu=False)
    c.environment = {"gpu": {"name": "NVIDIA H200"}}
    c.records = {
        "bench_vit_step": Record(
            "ok",
            figures={
                "ratios": {
                    "eager": {"speed": 1.2, "peak_memory": 0.9},
                    "compile": {"speed": 0.95, "peak_memory": 0.8},
                }
            },
        ),  # fmt: skip
        "bench_flower_pipeline": Record(
            "ok", figures={"speedup_per_epoch": 12.0, "ours_projected_full_s": 55.0}
        ),  # fmt: skip
        "bench_pixmo_pipeline": Record("failed"),
    }
    targets = c.targets()
    assert targets["bench_vit_step"]["met"] is False  # compiled step slower than torchvision
    assert targets["bench_flower_pipeline"]["met"] is True
    assert "bench_pixmo_pipeline" not in targets and "H200" in targets["bench_vit_step"]["note"]
    c.cpu = True
    assert c.targets()["bench_flower_pipeline"]["met"] is None


def test_unknown_parts_get_a_one_line_error():
    run = subprocess.run(
        ["bash", SCRIPT, "quick", "--parts", "flower_smok"], capture_output=True, text=True
    )
    assert run.returncode != 0
    assert run.stderr.strip() == "error: unknown part(s) flower_smok; see --list"


@pytest.mark.slow
def test_quick_cpu_run_writes_one_json_with_every_figure(tmp_path):
    parts = ["resume_flower", "nccl_ddp", "bench_flower_pipeline"]
    out, work = tmp_path / "out", tmp_path / "work"
    run = subprocess.run(
        ["bash", SCRIPT, "quick", "--cpu", "--parts", ",".join(parts), "--out", out,
         "--workdir", work, "--budget", "900"],
        capture_output=True, text=True,
    )  # fmt: skip
    summary = json.loads((out / "gpu_checks.json").read_text())
    assert run.returncode == 0, (summary["failures"], run.stdout[-3000:])
    assert summary["finished"] and summary["mode"].startswith("cpu")
    got = summary["parts"]
    assert set(got) == {"env", "data_flowers", *parts}
    assert {p["status"] for p in got.values()} == {"ok"} and summary["failures"] == {}
    assert summary["environment"]["torch"] and summary["environment"]["gpu"]["available"] is False

    resume = got["resume_flower"]["figures"]
    assert resume["first_exit"] == 75 and resume["second_exit"] == 0
    assert resume["stopped"] and resume["resumed_from"]
    done, total = resume["epochs"].split("/")
    assert done == total and 0 <= resume["final_val_acc"] <= 1 and resume["device"] == "cpu"

    ddp = got["nccl_ddp"]["figures"]
    assert ddp["ddp"] and ddp["backend"] == "gloo" and ddp["checkpoint_rng_states"] == 1

    bench = got["bench_flower_pipeline"]["figures"]
    assert bench["projection"].startswith("PROJECTED to the 100-epoch recipe")
    assert bench["ours_epochs"] == 2 and bench["original_epochs"] == 1
    assert bench["original_projected_full_s"] == pytest.approx(bench["original_seconds"] * 100)
    assert bench["speedup_per_epoch"] > 0
    assert summary["targets"]["bench_flower_pipeline"]["met"] is None  # CPU: no verdict

    log = (out / "gpu_checks.log").read_text()
    assert "===== resume_flower: ok" in log and "continue with:" in log  # the stop line
    assert sorted(p.name for p in out.iterdir()) == ["gpu_checks.json", "gpu_checks.log"]
