"""demo_scratch.py as a user runs it: the smoke preset, preemption + resume, bad input, the
stubbed-exercise message of a student release, and real Fashion-MNIST learning.

The fast tier runs the demo in this process (``demo_scratch.main(argv)``, see
tests/demo_in_process.py) on a tiny preset: a run and the contract API on it, a real SIGTERM
inside a step and the exact resume, bad input, a stubbed exercise, a few real Fashion-MNIST
images; one real command line (a fresh Python) checks the one-line error end to end. The
slow tier (``-m slow``) runs the smoke preset, the preemption from outside, a built student
release and the real-data learning claim as separate processes.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from demo_in_process import (
    assert_one_error_line,
    call_demo,
    command_line_of,
    signal_after_step,
    snapshot,
)

import demo_scratch
import transformer_utils
from instructor.release import build_release
from kit.errors import UserError
from kit.runs import read_predictions
from kit.scratch import synthetic_cifar
from kit.scratch.datasets import FASHION_MNIST_DIR
from kit.scratch.recipe import load_run_model, load_split, synthetic_cifar_dir

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "demo_scratch.py")
# CPU only (resume equality needs determinism), one thread: the CI machine has 2 busy cores.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")

TINY_PRESETS = """
scratch:
  tiny:
    dataset: cifar10
    val_images: 40
    model: vit
    patch_size: 8
    depth: 1
    embed_dim: 16
    num_heads: 2
    augment: crop_flip_erase
    erase_prob: 0.5
    label_smoothing: 0.1
    lr: 0.003
    warmup_epochs: 1
    epochs: EPOCHS
    batch_size: 16
    eval_batch_size: 32
    precision: fp32
    device: cpu
  fmnist_subset:           # real images: 4000 to train, 1000 to validate, all 10000 to test
    dataset: fashion_mnist
    val_images: 1000
    max_train_images: 4000
    model: cnn
    cnn_channels: [16, 32]
    cnn_convs_per_stage: 1
    cnn_hidden: 64
    dropout: 0.0
    custom_conv: true
    augment: none
    lr: 0.003
    warmup_epochs: 0.2
    epochs: 3
    batch_size: 64
    precision: fp32
  fmnist_few:              # real images, in this process: 256 to train, 64 to validate
    dataset: fashion_mnist
    val_images: 64
    max_train_images: 256
    model: cnn
    cnn_channels: [8]
    cnn_convs_per_stage: 1
    cnn_hidden: 16
    custom_conv: false
    augment: none
    epochs: 1
    batch_size: 64
    eval_batch_size: 1000
    precision: fp32
    device: cpu
"""


def run_demo(*args, cwd, demo=DEMO, timeout=900):
    return subprocess.run(
        [sys.executable, demo, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small synthetic CIFAR-10 (real format: 5 x 40 training, 40 test images) and presets."""
    root = tmp_path_factory.mktemp("scratch")
    synthetic_cifar.generate(root / "data", per_file=40, seed=1)
    for epochs in (2, 8):
        (root / f"tiny{epochs}.yml").write_text(TINY_PRESETS.replace("EPOCHS", str(epochs)))
    return root


def tiny_args(tiny, out, epochs=2, preset="tiny", data=True):
    args = ["--config", str(tiny / f"tiny{epochs}.yml"), "--exp_name", preset,
            "--output_dir", str(out)]  # fmt: skip
    return args + (["--data_dir", str(tiny / "data")] if data else [])


def history(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)["history"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    start = time.time()
    result = run_demo(cwd=cwd)  # defaults: --exp_name scratch_smoke, runs/scratch_smoke
    return cwd, result, time.time() - start


@pytest.mark.slow
def test_smoke_preset_end_to_end(smoke):
    cwd, result, elapsed = smoke
    assert result.returncode == 0, result.stderr[-2000:]
    run = cwd / "runs" / "scratch_smoke"
    real = (cwd / "cifar-10-batches-py").is_dir()
    if not real:
        assert (
            "SYNTHETIC DATA" in result.stdout
            and "SYNTHETIC DATA" in (run / "train.log").read_text()
        )
        assert (_data(cwd) / "test_batch").is_file()  # scratch_smoke's size: 1000 per file
    for name in ("config.yaml", "checkpoint.pt", "best.pt", "test_predictions.txt"):
        assert (run / name).is_file(), name
    preds, marked = read_predictions(run / "test_predictions.txt")
    assert marked is not real, "predictions from synthetic data carry the synthetic marker"
    assert len(preds) == 1000 and all(0 <= p < 10 for p in preds)  # 1000 per file
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is True and summary["synthetic"] is not real
    assert (summary["preset"], summary["dataset"], summary["model"]) == (
        "scratch_smoke", "cifar10", "vit",
    )  # fmt: skip
    labels = load_split(load_run_model(run)[0], "test", str(_data(cwd)))[1]
    accuracy = sum(int(p) == y for p, y in zip(preds, labels.tolist())) / len(preds)
    assert summary["test_acc"] == pytest.approx(accuracy)
    assert f"test accuracy {accuracy:.4f}" in (run / "train.log").read_text()
    assert summary["best_val_acc"] > 0.15, "the smoke run should learn (chance is 0.10)"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("test_acc")] == [summary["best_epoch"]]
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2, 3]
    print(f"scratch_smoke took {elapsed:.0f}s")


def _data(cwd):
    real = cwd / "cifar-10-batches-py"
    return real if real.is_dir() else cwd / synthetic_cifar_dir(1000)


@pytest.mark.slow
def test_contract_api_on_the_smoke_run(smoke):
    cwd, result, _ = smoke
    assert result.returncode == 0, result.stderr[-2000:]
    run = cwd / "runs" / "scratch_smoke"
    cfg, model = load_run_model(run)
    assert cfg.model == "vit" and not model.training
    images, labels, synthetic = load_split(cfg, "test", str(_data(cwd)))
    assert images.dtype == torch.uint8 and images.shape == (1000, 3, 32, 32)
    assert synthetic is not (cwd / "cifar-10-batches-py").is_dir()
    with torch.no_grad():
        preds = model(images.float() / 255).argmax(1).tolist()
    assert preds == read_predictions(run / "test_predictions.txt")[0]
    train = load_split(cfg, "train", str(_data(cwd)))[0]
    val = load_split(cfg, "val", str(_data(cwd)))[0]
    assert (len(train), len(val)) == (cfg.max_train_images, cfg.val_images)
    _, last = load_run_model(run, which="last")
    assert last.patch_grid == 4
    with pytest.raises(UserError, match="not a Question 4 run"):
        load_run_model(cwd)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_resume_matches_uninterrupted(tiny, tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, DEMO, *tiny_args(tiny, out, epochs=8)],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 600
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 75, stderr[-2000:]
    assert 1 <= len(history(out)) < 8
    resumed = run_demo(*tiny_args(tiny, out, epochs=8), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = run_demo(*tiny_args(tiny, tmp_path / "straight", epochs=8), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert history(out) == history(tmp_path / "straight")
    for name in ("test_predictions.txt",):
        assert (out / name).read_text() == (tmp_path / "straight" / name).read_text()
    summaries = [json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "straight")]
    assert summaries[0]["test_acc"] == summaries[1]["test_acc"]


@pytest.mark.slow
def test_student_release_stops_at_the_first_unwritten_exercise(tiny, tmp_path):
    release = tmp_path / "student"
    build_release(release, assignment_path="iiit_a5")  # a course with Question 4's ViT on CIFAR-10
    out = release / "runs" / "tiny"
    result = run_demo(*tiny_args(tiny, out), cwd=release, demo=str(release / "demo_scratch.py"))
    assert result.returncode == 1, result.stdout[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    # said before any data is read or a run folder made, naming every exercise still missing
    assert "built from exercises you have not written yet: 1." in lines[0], lines[0]
    assert "python -m unittest test_functions" in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_learns_real_fashion_mnist_from_a_few_thousand_images(tiny, tmp_path):
    out = tmp_path / "fmnist"
    result = run_demo(*tiny_args(tiny, out, preset="fmnist_subset", data=False), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] is False
    assert len((out / "test_predictions.txt").read_text().split()) == 10000
    assert summary["test_acc"] >= 0.6, summary  # chance is 0.1
    print(f"real Fashion-MNIST subset: test accuracy {summary['test_acc']:.4f}")


# ---------------------------------------------------------------- in this process


@pytest.fixture(scope="module")
def command_line(request, tmp_path_factory):
    """The real command line with a bad input (tests/demo_in_process.py: COMMAND_LINES), in
    a fresh Python started by the first in-process test (see ``demo``) to load beside them."""
    check = command_line_of(request, tmp_path_factory)
    yield check
    check.close()


@pytest.fixture
def demo(command_line, tmp_path, monkeypatch, capfd):
    """``demo(*args)``: demo_scratch.main(args) in this process, in ``tmp_path``: (exit status,
    stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return lambda *args: call_demo(demo_scratch.main, args, capfd)


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """An uninterrupted tiny run (2 epochs of 10 steps) in this process: the fast tier's
    smoke run, and what a stopped and resumed run must equal."""
    cwd = tmp_path_factory.mktemp("scratch_straight")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.delenv("WORLD_SIZE", raising=False)
        code, out, err = call_demo(demo_scratch.main, tiny_args(tiny, cwd / "straight"))
    assert code == 0, err[-2000:]
    return cwd / "straight", out


def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(demo, tiny, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in (tiny / "data").iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    (data / "data_batch_2").write_bytes((data / "data_batch_2").read_bytes()[:300])
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    code, stdout, stderr = demo(*tiny_args(tiny, out, data=False), "--data_dir", str(data))
    assert_one_error_line(code, stdout, stderr, str(data / "data_batch_2"))
    assert not out.exists()
    code, stdout, stderr = demo(*tiny_args(tiny, out, preset="nope"))
    assert_one_error_line(code, stdout, stderr, "unknown preset 'nope'")
    assert not out.exists()
    assert snapshot(tmp_path) == before


def test_a_stubbed_exercise_stops_the_demo_in_one_line(demo, tiny, tmp_path, monkeypatch):
    """What a student release does with an exercise not written yet (its function raises
    NotImplementedError with this message, see instructor/release.py): one line naming the
    exercise, before anything is written. The release itself: the slow test above."""

    def stub(self, *args, **kwargs):
        raise NotImplementedError(
            "LayerNorm.forward is not implemented yet (exercise 1.2): write your code between "
            "YOUR CODE START and YOUR CODE END in transformer_utils.py, then run "
            "python -m unittest test_functions.TestClass.test_layer_norm -v"
        )

    monkeypatch.setattr(transformer_utils.LayerNorm, "forward", stub)
    out = tmp_path / "runs" / "tiny"
    code, stdout, stderr = demo(*tiny_args(tiny, out))
    line = assert_one_error_line(code, stdout, stderr, "not implemented yet (exercise 1.")
    assert "LayerNorm.forward" in line
    assert not out.exists()
    assert snapshot(tmp_path) == {}


def test_a_tiny_run_writes_everything(straight, tiny):
    """The smoke test's story on a tiny preset (synthetic CIFAR-10 in the real format): every
    file, the synthetic marks, the test accuracy in summary.json, the log and TensorBoard."""
    run, stdout = straight
    assert "Traceback" not in stdout
    for name in ("config.yaml", "checkpoint.pt", "best.pt", "test_predictions.txt"):
        assert (run / name).is_file(), name
    preds, marked = read_predictions(run / "test_predictions.txt")
    assert marked, "predictions from synthetic data carry the synthetic marker"
    assert len(preds) == 40 and all(0 <= p < 10 for p in preds)  # 40 per file
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is True and summary["synthetic"] is True
    assert (summary["preset"], summary["dataset"], summary["model"]) == ("tiny", "cifar10", "vit")
    labels = load_split(load_run_model(run)[0], "test", str(tiny / "data"))[1]
    accuracy = sum(int(p) == y for p, y in zip(preds, labels.tolist())) / len(preds)
    assert summary["test_acc"] == pytest.approx(accuracy)
    assert f"test accuracy {accuracy:.4f}" in (run / "train.log").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Read every event as written (no purge of "orphaned" steps): in one process that has
    # opened 10 writers, a file named ...<same second>.10 sorts before ...9 and the Trainer's
    # restart marker would purge the test_acc read before it.
    events = EventAccumulator(str(run / "tensorboard"), purge_orphaned_data=False)
    events.Reload()
    assert [e.step for e in events.Scalars("test_acc")] == [summary["best_epoch"]]
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]


def test_contract_api_on_a_tiny_run(straight, tiny):
    run, _ = straight
    cfg, model = load_run_model(run)
    assert cfg.model == "vit" and not model.training
    images, labels, synthetic = load_split(cfg, "test", str(tiny / "data"))
    assert images.dtype == torch.uint8 and images.shape == (40, 3, 32, 32)
    assert synthetic and len(labels) == 40
    with torch.no_grad():
        preds = model(images.float() / 255).argmax(1).tolist()
    assert preds == read_predictions(run / "test_predictions.txt")[0]
    train = load_split(cfg, "train", str(tiny / "data"))[0]
    val = load_split(cfg, "val", str(tiny / "data"))[0]
    assert (len(train), len(val)) == (5 * 40 - cfg.val_images, cfg.val_images)
    _, last = load_run_model(run, which="last")
    assert last.patch_grid == 4
    with pytest.raises(UserError, match="not a Question 4 run"):
        load_run_model(run.parent)


def test_sigterm_in_a_step_checkpoints_exits_75_and_resume_matches_uninterrupted(
    demo, tiny, straight, tmp_path, monkeypatch
):
    """A real SIGTERM in epoch 2, caught by the demo's handler: checkpoint.pt, status 75 and
    the command that continues; --resume ends exactly as the uninterrupted run."""
    run, _ = straight
    out = tmp_path / "interrupted"
    args = tiny_args(tiny, out)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, DEMO, *args])
    with signal_after_step(signal.SIGTERM, 13):
        code, _, err = demo(*args)
    assert code == 75, err[-2000:]
    assert "Traceback" not in err
    resume = shlex.join([sys.executable, DEMO, *args, "--resume"])
    assert err.strip().splitlines()[-1] == (
        "stopped by SIGTERM: checkpoint.pt written at epoch 2 of 2, step 3 of 10; "
        f"continue with: {resume}"
    )
    assert len(history(out)) == 1 and not (out / "summary.json").exists()
    code, _, err = demo(*args, "--resume")
    assert code == 0, err[-2000:]
    assert history(out) == history(run)
    assert (out / "test_predictions.txt").read_text() == (run / "test_predictions.txt").read_text()
    summaries = [json.loads((d / "summary.json").read_text()) for d in (out, run)]
    assert summaries[0]["test_acc"] == summaries[1]["test_acc"]


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_a_few_real_fashion_mnist_images_run_end_to_end(demo, tiny, tmp_path):
    """The real-data path (the default Fashion-MNIST folder, not synthetic, all 10000 test
    images predicted) on a few images; the learning claim is the slow test above."""
    out = tmp_path / "fmnist"
    code, _, err = demo(*tiny_args(tiny, out, preset="fmnist_few", data=False))
    assert code == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] is False and summary["dataset"] == "fashion_mnist"
    preds, marked = read_predictions(out / "test_predictions.txt")
    assert not marked and len(preds) == 10000 and all(0 <= p < 10 for p in preds)
    assert 0 <= summary["test_acc"] <= 1


# ---------------------------------------------------------------- the real command line


def test_the_command_line_refuses_bad_input_in_one_line(command_line):
    """The real command line (absl's app.run, sys.exit, the imports): one line, status 1.
    Last in the module: its process was started early (see ``command_line``)."""
    result = command_line.result()
    assert_one_error_line(result.returncode, result.stdout, result.stderr, "unknown preset")
    assert "'nope'" in result.stderr and "scratch_smoke" in result.stderr
    assert snapshot(command_line.cwd) == {}
