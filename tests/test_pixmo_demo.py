"""demo_pixmo.py as a user runs it: the smoke preset end to end, preemption, each bad input.

The fast tier runs the demo in this process (``demo_pixmo.main(argv)``, see
tests/demo_in_process.py): every bad input, and a tiny run on generated data stopped by a
real SIGTERM inside a step, then resumed to the end; one real command line (a fresh Python)
checks the one-line error end to end. The slow tier (``-m slow``) runs the smoke preset and
a preemption from outside as separate processes.
"""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from demo_in_process import (
    assert_one_error_line,
    call_demo,
    command_line_of,
    error_lines,
    signal_after_step,
    snapshot,
)

import demo_pixmo
from kit.config import read_data_sources
from kit.pixmo.synthetic import generate
from kit.runs import read_predictions

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_pixmo.py"

# A tiny preset for the preemption test (a --config file of its own, like a user's).
TINY_CONFIG = """
pixmo:
  tiny:
    model: point
    tokens_side: 2
    crop_size: 32
    trainable_from: none
    epochs: 2
    batch_size: 4
    eval_batch_size: 16
    image_size: 32
    augment: true
    synthetic_sizes: [80, 16, 16]
    synthetic_min_side: 40
    synthetic_max_side: 80
    download_weights: false
    bn_calibration_images: 16
"""


# Smaller still, for the run in this process: 8/4/4 generated images, 2 steps per epoch,
# one encoder layer (its 2 M trainable parameters and Adam's state fill checkpoint.pt).
IN_PROCESS_CONFIG = """
pixmo:
  tiny:
    model: point
    tokens_side: 2
    num_layers: 1
    head_hidden: 32
    crop_size: 32
    trainable_from: none
    epochs: 2
    batch_size: 4
    eval_batch_size: 16
    image_size: 32
    augment: true
    synthetic_sizes: [8, 4, 4]
    synthetic_min_side: 40
    synthetic_max_side: 60
    download_weights: false
    bn_calibration_images: 8
    device: cpu
"""


def run_demo(*args, cwd, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_line_error(result, needle):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    start = time.time()
    result = run_demo("--exp_name", "pixmo_smoke", cwd=tmp_path)
    seconds = time.time() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "runs" / "pixmo_smoke"
    for name in ("config.yaml", "train.log", "checkpoint.pt", "best.pt", "test_pixmo.txt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    preds, synthetic = read_predictions(run / "test_pixmo.txt")
    assert synthetic and len(preds) == 32 and all(0 <= p < 20 for p in preds)
    log = (run / "train.log").read_text()
    assert "SYNTHETIC DATA" in log and "SYNTHETIC DATA" in result.stdout
    assert "synthetic test accuracy" in log
    # Generated in its own folder (one per size), never where the real data goes.
    made = list((tmp_path / "synthetic-data").glob("pixmo_data*/test_labels.txt"))
    assert len(made) == 1 and made[0].parent.name.startswith("pixmo_data-"), made
    assert not (tmp_path / "pixmo_data").exists()
    print(f"pixmo_smoke end to end: {seconds:.1f}s")

    # The finished run is not overwritten without --resume.
    before = (run / "config.yaml").read_bytes(), (run / "test_pixmo.txt").read_bytes()
    again = run_demo("--exp_name", "pixmo_smoke", cwd=tmp_path)
    assert_one_line_error(again, "already holds a run")
    assert ((run / "config.yaml").read_bytes(), (run / "test_pixmo.txt").read_bytes()) == before


@pytest.mark.slow
def test_preempted_run_exits_75_and_resumes(tmp_path):
    (tmp_path / "tiny.yml").write_text(TINY_CONFIG)
    args = ["--exp_name", "tiny", "--config", str(tmp_path / "tiny.yml"), "--output_dir", "run"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    # The Trainer installs its SIGTERM handler right after creating the TensorBoard folder.
    deadline = time.time() + 120
    while not (tmp_path / "run" / "tensorboard").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output[-3000:]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run" / "test_pixmo.txt").exists()
    stopped = [line for line in output.splitlines() if line.startswith("stopped by SIGTERM: ")]
    assert len(stopped) == 1 and stopped[0].endswith(" ".join(args[2:]) + " --resume"), output
    where = stopped[0].split(" written at ", 1)[1].split(";")[0]

    resumed = run_demo(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from run/checkpoint.pt at {where}\n" in resumed.stdout  # the same place
    preds, synthetic = read_predictions(tmp_path / "run" / "test_pixmo.txt")
    assert synthetic and len(preds) == 16
    said = [line for line in resumed.stdout.splitlines() if " predictions to " in line]
    assert len(said) == 1 and said[0].split(" predictions to ")[1].startswith(
        "run/test_pixmo.txt: SYNTHETIC DATA, do not upload"
    ), said


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A valid tiny PixMo folder to break in different ways."""
    folder = tmp_path_factory.mktemp("pixmo_small")
    generate(folder, sizes=(4, 4, 2), min_side=40, max_side=60, seed=1)
    return folder


def copy_data(source, target):
    target.mkdir()
    for name in ("train_data.pkl", "val_data.pkl", "test_data.pkl"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


@pytest.fixture(scope="module")
def command_line(request, tmp_path_factory):
    """The real command line with a bad input (tests/demo_in_process.py: COMMAND_LINES), in
    a fresh Python started by the first in-process test (see ``demo``) to load beside them."""
    check = command_line_of(request, tmp_path_factory)
    yield check
    check.close()


@pytest.fixture
def demo(command_line, tmp_path, monkeypatch, capfd):
    """``demo(*args)``: demo_pixmo.main(args) in this process, in ``tmp_path``: (exit status,
    stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return lambda *args: call_demo(demo_pixmo.main, args, capfd)


@pytest.mark.parametrize("name", ["nowhere", "pixmo_data"])  # pixmo_data: the default's name
def test_missing_data_dir(demo, tmp_path, name):
    """An explicit --data_dir that does not exist is an error, also the default name; the
    message says where the real data comes from (config.yml's data_sources)."""
    code, out, err = demo("--data_dir", name, "--output_dir", "run")
    assert_one_error_line(code, out, err, f"--data_dir {name} does not exist")
    assert f"(the real data: {read_data_sources()['pixmo']})" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "synthetic-data").exists()
    assert snapshot(tmp_path) == {}


def test_corrupt_pickle(demo, tmp_path, small_data):
    data = copy_data(small_data, tmp_path / "data")
    (data / "val_data.pkl").write_bytes(b"\x80\x04 this is not a pickle")
    before = snapshot(tmp_path)
    code, out, err = demo("--data_dir", "data", "--output_dir", "run")
    assert_one_error_line(code, out, err, "val_data.pkl is not a readable pickle")
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert snapshot(tmp_path) == before


def test_point_outside_its_image(demo, tmp_path, small_data):
    data = copy_data(small_data, tmp_path / "data")
    examples = pickle.loads((data / "val_data.pkl").read_bytes())
    height, width = examples[3]["image"].shape[:2]
    examples[3]["point"] = (width + 5.0, height / 2)
    (data / "val_data.pkl").write_bytes(pickle.dumps(examples))
    before = snapshot(tmp_path)
    code, out, err = demo("--data_dir", "data", "--output_dir", "run")
    assert_one_error_line(code, out, err, "val example 3")
    assert "outside" in err and "val_data.pkl" in err
    assert snapshot(tmp_path) == before


def test_wrong_shape_and_labels(demo, tmp_path, small_data):
    data = copy_data(small_data, tmp_path / "data")
    examples = pickle.loads((data / "train_data.pkl").read_bytes())
    examples[1]["image"] = np.zeros((5, 5, 3), np.float32)
    (data / "train_data.pkl").write_bytes(pickle.dumps(examples))
    before = snapshot(tmp_path)
    code, out, err = demo("--data_dir", "data", "--output_dir", "run")
    assert_one_error_line(code, out, err, "train example 1")
    assert snapshot(tmp_path) == before


def test_unknown_preset(demo, tmp_path):
    code, out, err = demo("--exp_name", "pixmo_nope")
    assert_one_error_line(code, out, err, "unknown preset 'pixmo_nope'")
    assert "pixmo_demo" in err and "pixmo_point" in err
    assert snapshot(tmp_path) == {}


def test_existing_run_dir_and_bad_resume(demo, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mine: keep\n")
    code, out, err = demo("--output_dir", "run")
    assert_one_error_line(code, out, err, "already holds a run")
    assert (run / "config.yaml").read_text() == "mine: keep\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert not (tmp_path / "synthetic-data").exists()  # refused before any slow work

    code, out, err = demo("--output_dir", "fresh", "--resume")
    assert_one_error_line(code, out, err, "fresh holds no run (no checkpoint.pt or config.yaml)")
    assert "drop --resume" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_missing_weights_file(demo, tmp_path):
    code, out, err = demo("--weights", "no_such.pth")
    assert_one_error_line(code, out, err, "--weights no_such.pth does not exist")
    assert snapshot(tmp_path) == {}


def test_unreadable_weights_file_leaves_no_run(demo, tmp_path, small_data):
    copy_data(small_data, tmp_path / "data")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    before = snapshot(tmp_path)
    code, out, err = demo("--weights", "junk.pth", "--data_dir", "data", "--output_dir", "run")
    assert_one_error_line(code, out, err, "junk.pth is not a readable torch checkpoint")
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- runs, in this process


def tiny_args(tmp_path, output_dir="run"):
    (tmp_path / "tiny.yml").write_text(IN_PROCESS_CONFIG)
    return [
        "--exp_name",
        "tiny",
        "--config",
        str(tmp_path / "tiny.yml"),
        "--output_dir",
        output_dir,
    ]


def test_a_tiny_run_stopped_by_sigterm_resumes_and_finishes_end_to_end(demo, tmp_path, monkeypatch):
    """Both slow stories on a tiny preset, in this process. Preemption: a real SIGTERM in the
    first epoch, caught by the demo's handler: checkpoint.pt, no predictions, status 75 and
    the command that continues; --resume continues from the place the message named. The
    smoke run: no pixmo_data/, so a synthetic set is generated into synthetic-data/ and the
    run says so; every file of a run; the finished run is not overwritten without --resume."""
    args = tiny_args(tmp_path)
    monkeypatch.setattr(sys, "orig_argv", ["python", "demo_pixmo.py", *args])
    with signal_after_step(signal.SIGTERM, 1):
        code, out, err = demo(*args)
    assert code == 75, out[-3000:] + err[-3000:]
    assert "Traceback" not in out + err
    assert "SYNTHETIC DATA" in out
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run" / "test_pixmo.txt").exists()
    stopped = [line for line in error_lines(err) if line.startswith("stopped by SIGTERM: ")]
    assert len(stopped) == 1 and stopped[0].endswith(" ".join(args[2:]) + " --resume"), err
    where = stopped[0].split(" written at ", 1)[1].split(";")[0]
    assert where == "epoch 1 of 2, step 1 of 2"

    code, out, err = demo(*args, "--resume")
    assert code == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in out + err
    assert f"resumed from run/checkpoint.pt at {where}\n" in out  # the same place
    said = [line for line in out.splitlines() if " predictions to " in line]
    assert len(said) == 1 and said[0].split(" predictions to ")[1].startswith(
        "run/test_pixmo.txt: SYNTHETIC DATA, do not upload"
    ), said
    run = tmp_path / "run"
    for name in ("config.yaml", "train.log", "checkpoint.pt", "best.pt", "test_pixmo.txt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    preds, synthetic = read_predictions(run / "test_pixmo.txt")
    assert synthetic and len(preds) == 4 and all(0 <= p < 20 for p in preds)
    log = (run / "train.log").read_text()
    assert "SYNTHETIC DATA" in log and "SYNTHETIC DATA" in out
    assert "synthetic test accuracy" in log
    # Generated in its own folder (one per size), never where the real data goes.
    made = list((tmp_path / "synthetic-data").glob("pixmo_data*/test_labels.txt"))
    assert len(made) == 1 and made[0].parent.name.startswith("pixmo_data-"), made
    assert not (tmp_path / "pixmo_data").exists()

    before = snapshot(tmp_path)
    code, out, err = demo(*args)
    assert_one_error_line(code, out, err, "already holds a run")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- the real command line


def test_the_command_line_refuses_bad_input_in_one_line(command_line):
    """The real command line (absl's app.run, sys.exit, the imports): one line, status 1.
    Last in the module: its process was started early (see ``command_line``)."""
    result = command_line.result()
    assert_one_error_line(result.returncode, result.stdout, result.stderr, "unknown preset")
    assert "'pixmo_nope'" in result.stderr and "pixmo_point" in result.stderr
    assert snapshot(command_line.cwd) == {}
