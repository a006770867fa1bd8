"""demo_pixmo.py as a user runs it: the smoke preset end to end, preemption, each bad input."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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
    # Generated in its own folder, never where the real data goes.
    assert (tmp_path / "synthetic-data" / "pixmo_data" / "test_labels.txt").is_file()
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


@pytest.mark.parametrize("name", ["nowhere", "pixmo_data"])  # pixmo_data: the default's name
def test_missing_data_dir(tmp_path, name):
    """An explicit --data_dir that does not exist is an error, also the default name; the
    message says where the real data comes from (config.yml's data_sources)."""
    result = run_demo("--data_dir", name, "--output_dir", "run", cwd=tmp_path)
    assert_one_line_error(result, f"--data_dir {name} does not exist")
    assert f"(the real data: {read_data_sources()['pixmo']})" in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "synthetic-data").exists()


def test_corrupt_pickle(tmp_path, small_data):
    data = copy_data(small_data, tmp_path / "data")
    (data / "val_data.pkl").write_bytes(b"\x80\x04 this is not a pickle")
    result = run_demo("--data_dir", "data", "--output_dir", "run", cwd=tmp_path)
    assert_one_line_error(result, "val_data.pkl is not a readable pickle")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_point_outside_its_image(tmp_path, small_data):
    data = copy_data(small_data, tmp_path / "data")
    examples = pickle.loads((data / "val_data.pkl").read_bytes())
    height, width = examples[3]["image"].shape[:2]
    examples[3]["point"] = (width + 5.0, height / 2)
    (data / "val_data.pkl").write_bytes(pickle.dumps(examples))
    result = run_demo("--data_dir", "data", "--output_dir", "run", cwd=tmp_path)
    assert_one_line_error(result, "val example 3")
    assert "outside" in result.stderr and "val_data.pkl" in result.stderr


def test_wrong_shape_and_labels(tmp_path, small_data):
    data = copy_data(small_data, tmp_path / "data")
    examples = pickle.loads((data / "train_data.pkl").read_bytes())
    examples[1]["image"] = np.zeros((5, 5, 3), np.float32)
    (data / "train_data.pkl").write_bytes(pickle.dumps(examples))
    result = run_demo("--data_dir", "data", "--output_dir", "run", cwd=tmp_path)
    assert_one_line_error(result, "train example 1")


def test_unknown_preset(tmp_path):
    result = run_demo("--exp_name", "pixmo_nope", cwd=tmp_path)
    assert_one_line_error(result, "unknown preset 'pixmo_nope'")
    assert "pixmo_demo" in result.stderr and "pixmo_point" in result.stderr


def test_existing_run_dir_and_bad_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mine: keep\n")
    result = run_demo("--output_dir", "run", cwd=tmp_path)
    assert_one_line_error(result, "already holds a run")
    assert (run / "config.yaml").read_text() == "mine: keep\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert not (tmp_path / "synthetic-data").exists()  # refused before any slow work

    fresh = run_demo("--output_dir", "fresh", "--resume", cwd=tmp_path)
    assert_one_line_error(fresh, "fresh holds no run (no checkpoint.pt or config.yaml)")
    assert "drop --resume" in fresh.stderr


def test_missing_weights_file(tmp_path):
    result = run_demo("--weights", "no_such.pth", cwd=tmp_path)
    assert_one_line_error(result, "--weights no_such.pth does not exist")


def test_unreadable_weights_file_leaves_no_run(tmp_path, small_data):
    copy_data(small_data, tmp_path / "data")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    result = run_demo(
        "--weights", "junk.pth", "--data_dir", "data", "--output_dir", "run", cwd=tmp_path
    )
    assert_one_line_error(result, "junk.pth is not a readable torch checkpoint")
    assert not (tmp_path / "run" / "config.yaml").exists()
