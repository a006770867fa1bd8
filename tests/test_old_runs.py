"""Run folders written by an older kit still resume: checkpoints hold plain data only.

``tests/data/run_before_house/`` was written by the kit as it was before its machinery moved
into the ``kit/`` package (commit 3fad844): ``demo_scratch.py`` with the preset of
``tests/data/before_house.yml`` (synthetic CIFAR-10 in the real format, a tiny ViT), stopped
after step 3 of epoch 1 of 2. Today's ``demo_scratch.py --resume`` must finish it, and finish
it exactly as an uninterrupted run of today's code does.
"""

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
OLD_RUN = DATA / "run_before_house"
PRESET = DATA / "before_house.yml"
# What a checkpoint may hold: Python's own types, tensors, numpy arrays (the RNG states).
PLAIN_MODULES = ("builtins", "collections", "_codecs", "copyreg", "torch", "numpy")


class PlainDataOnly(pickle.Unpickler):
    """Refuses to rebuild any object of a class that is not plain data (e.g. the kit's)."""

    def find_class(self, module, name):
        if module.split(".")[0] not in PLAIN_MODULES:
            raise pickle.UnpicklingError(f"checkpoint holds a {module}.{name}, not plain data")
        return super().find_class(module, name)


class _PlainPickle:
    Unpickler = PlainDataOnly
    load = pickle.load


def load_plain(path):
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PlainPickle)


def demo(cwd, *args):
    cmd = [sys.executable, str(ROOT / "demo_scratch.py"), "--config", str(PRESET)]
    cmd += ["--exp_name", "before_house", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_old_checkpoint_holds_plain_data_only():
    state = load_plain(OLD_RUN / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    assert state["config"]["exp_name"] == "before_house"


def test_a_run_stopped_before_the_move_resumes_exactly(tmp_path):
    shutil.copytree(OLD_RUN, tmp_path / "old")
    resumed = demo(tmp_path, "--output_dir", "old", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (tmp_path / "old" / "train.log").read_text()
    assert "resumed from old/checkpoint.pt at epoch 1 of 2, step 3 of 8" in log
    fresh = demo(tmp_path, "--output_dir", "fresh")  # today's code, uninterrupted
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    for name in ("test_predictions.txt", "best.pt"):
        assert (tmp_path / "old" / name).is_file(), name
    old = (tmp_path / "old" / "test_predictions.txt").read_text()
    assert old == (tmp_path / "fresh" / "test_predictions.txt").read_text()
    # what today's Trainer writes is plain data too
    for name in ("checkpoint.pt", "best.pt"):
        load_plain(tmp_path / "fresh" / name)
