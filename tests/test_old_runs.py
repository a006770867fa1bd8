"""Run folders written by an older kit still resume: checkpoints hold plain data only.

``tests/data/run_before_house/`` was written by the kit as it was before its machinery moved
into the ``kit/`` package (commit 3fad844): ``demo_scratch.py`` with the preset of
``tests/data/before_house.yml`` (synthetic CIFAR-10 in the real format, a tiny ViT), stopped
after step 3 of epoch 1 of 2. Today's ``demo_scratch.py --resume`` must finish it, and finish
it exactly as an uninterrupted run of today's code does. Both runs go through the demo's
``main(argv)`` in this process (tests/demo_in_process.py), which is what the command line runs.
"""

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from demo_in_process import call_demo

import demo_scratch

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


def demo(capfd, *args):
    """demo_scratch.py with the old run's preset, in this process: (status, stdout, stderr)."""
    return call_demo(
        demo_scratch.main, ["--config", str(PRESET), "--exp_name", "before_house", *args], capfd
    )


def test_the_old_checkpoint_holds_plain_data_only():
    state = load_plain(OLD_RUN / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    assert state["config"]["exp_name"] == "before_house"


def test_a_run_stopped_before_the_move_resumes_exactly(tmp_path, monkeypatch, capfd):
    shutil.copytree(OLD_RUN, tmp_path / "old")
    monkeypatch.chdir(tmp_path)  # the old run's config.yaml names a relative data folder
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, _, err = demo(capfd, "--output_dir", "old", "--resume")
    assert code == 0, err[-2000:]
    log = (tmp_path / "old" / "train.log").read_text()
    assert "resumed from old/checkpoint.pt at epoch 1 of 2, step 3 of 8" in log
    code, _, err = demo(capfd, "--output_dir", "fresh")  # today's code, uninterrupted
    assert code == 0, err[-2000:]
    for name in ("test_predictions.txt", "best.pt"):
        assert (tmp_path / "old" / name).is_file(), name
    old = (tmp_path / "old" / "test_predictions.txt").read_text()
    assert old == (tmp_path / "fresh" / "test_predictions.txt").read_text()
    # what today's Trainer writes is plain data too
    for name in ("checkpoint.pt", "best.pt"):
        load_plain(tmp_path / "fresh" / name)


def test_a_setting_the_kit_gained_since_resumes_at_its_default(tmp_path):
    """The old config.yaml lacks ``pool`` (added later): resuming with the default works, a
    preset that changes it is refused in one line naming it."""
    import yaml

    from kit.errors import UserError
    from kit.runs import check_resume_config

    saved = yaml.safe_load((OLD_RUN / "config.yaml").read_text())
    assert "pool" not in saved
    shutil.copy(OLD_RUN / "config.yaml", tmp_path / "config.yaml")
    defaults = {"pool": "cls", "epochs": 50}
    check_resume_config(tmp_path, dict(saved, pool="cls"), defaults)
    with pytest.raises(UserError, match=r"differ from .* in pool;"):
        check_resume_config(tmp_path, dict(saved, pool="mean"), defaults)
    with pytest.raises(UserError, match=r"in epochs;"):  # saved keys still count
        check_resume_config(tmp_path, dict(saved, epochs=3, pool="cls"), defaults)
