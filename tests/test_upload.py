"""python -m kit.upload: the course's uploads gathered into one folder and checked as the
grader checks them; the training script is one self-contained file that trains the run again."""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit import upload
from kit.errors import UserError
from kit.runs import SYNTHETIC_MARKER

ROOT = Path(__file__).resolve().parents[1]
COURSE = yaml.safe_load((ROOT / "course.yml").read_text())  # the default course: CS444 MP3


def fake_run(folder, kind="flower", lines=5, synthetic=False, wrote=None, classes=102, first=None):
    """A run folder as a demo leaves it (no training): config.yaml, train.log, predictions."""
    folder.mkdir(parents=True)
    config = {"flower": {"encoder_name": "vit_tiny_test", "method": "vpt"},
              "pixmo": {"tokens_side": 2}}[kind]  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(config, exp_name="tiny")))
    name = {"flower": "test_flower.txt", "pixmo": "test_pixmo.txt"}[kind]
    preds = [str(i % classes) for i in range(lines)]
    if first is not None:
        preds[0] = str(first)
    (folder / name).write_text("\n".join(([SYNTHETIC_MARKER] if synthetic else []) + preds) + "\n")
    (folder / "train.log").write_text(
        f"12:00:00 best val acc 0.5 (epoch 1); wrote {wrote or lines} predictions to "
        f"{folder / name}\n"
    )
    return folder


def stub_scripts(monkeypatch):
    """Building a training script imports the demo in a fresh Python (seconds): a stand-in
    here, the real one in the slow test below."""
    monkeypatch.setattr(upload, "training_script", lambda name, run, root=ROOT: f"# {run.path}\n")


def test_the_course_file_lists_the_uploads_of_readme():
    files = [u["file"] for u in COURSE["uploads"]]
    readme = (ROOT / "README.md").read_text().split("**What to upload.**", 1)[1]
    assert files == [line.split("`")[1] for line in readme.split("\n\n")[1].splitlines()]
    kinds = {u["file"]: u["kind"] for u in COURSE["uploads"]}
    assert kinds["transformer_utils.py"] == "code" and kinds["test_flower.txt"] == "predictions"
    assert kinds["script_q2.py"] == "script"


def test_gathers_checks_and_reports_every_upload(tmp_path, monkeypatch, capsys):
    stub_scripts(monkeypatch)
    flower = fake_run(tmp_path / "runs" / "flower")
    pixmo = fake_run(tmp_path / "runs" / "pixmo", "pixmo", lines=4, classes=20)
    out = tmp_path / "upload"
    assert upload.gather([str(flower), str(pixmo)], str(out)) is True
    said = capsys.readouterr().out
    assert said.count("\nok ") + said.startswith("ok ") == 5 and "MISSING" not in said, said
    assert sorted(p.name for p in out.iterdir()) == sorted(u["file"] for u in COURSE["uploads"])
    assert (out / "test_flower.txt").read_text() == (flower / "test_flower.txt").read_text()
    assert (out / "transformer_utils.py").read_bytes() == (
        ROOT / "transformer_utils.py"
    ).read_bytes()
    with pytest.raises(UserError, match="already holds"):  # nothing overwritten by accident
        upload.gather([str(flower), str(pixmo)], str(out))
    assert upload.gather([str(flower), str(pixmo)], str(out), force=True) is True


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(synthetic=True), "comes from SYNTHETIC data"),
        (dict(wrote=9), "has 5 lines but the run wrote 9 predictions"),
        (dict(first=150), "class 150 is outside 0..101"),
    ],
)
def test_a_prediction_file_the_grader_would_refuse_is_missing(
    tmp_path, monkeypatch, capsys, change, words
):
    stub_scripts(monkeypatch)
    flower = fake_run(tmp_path / "flower", **change)
    out = tmp_path / "upload"
    assert upload.gather([str(flower)], str(out)) is False
    lines = capsys.readouterr().out.splitlines()
    flower_line = next(line for line in lines if "test_flower.txt:" in line)
    assert flower_line.startswith("MISSING") and words in flower_line, flower_line
    assert not (out / "test_flower.txt").exists()
    assert any(line.startswith("MISSING  test_pixmo.txt: no RUN given") for line in lines)


def test_command_line_is_one_line_errors_and_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kit.upload", str(tmp_path / "nowhere"), "--out", str(tmp_path / "u")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "does not exist" in proc.stderr


def test_the_script_gathers_the_kit_folders_modules_not_a_venv_inside_it(tmp_path, monkeypatch):
    """README's Quick start makes ``.venv`` inside the kit's folder: the packages installed
    there are below the folder but are not the kit's (a newcomer's script_q2.py once tried to
    read ``PIL.py`` from the kit's folder)."""
    root = tmp_path / "kit"
    site = root / ".venv" / "lib" / "python3" / "site-packages"
    (site / "installed").mkdir(parents=True)
    (site / "installed" / "__init__.py").write_text("VALUE = 1\n")
    (site / "loose.py").write_text("VALUE = 2\n")
    (root / "helpers").mkdir()
    (root / "helpers" / "__init__.py").write_text("")
    (root / "helpers" / "steps.py").write_text("import installed, loose\n")
    (root / "demo_x.py").write_text("import helpers.steps\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    assert upload.modules_of("demo_x.py", root) == ["demo_x", "helpers", "helpers.steps"]
    assert upload.source_of("helpers.steps", root) == ("import installed, loose\n", False)


@pytest.mark.slow
def test_the_training_script_trains_the_run_again(tmp_path):
    """A tiny flower run, its script_q2.py built by the real command, run from an empty
    folder: the same best validation accuracy at the same epoch, the same predictions."""
    from kit.flower import synthetic as synthetic_flowers

    data = tmp_path / "data"
    synthetic_flowers.generate(data, seed=1, counts={"train": 32, "val": 16, "test": 8})
    (tmp_path / "tiny.yml").write_text(
        "flower:\n  tiny:\n    encoder_name: vit_tiny_test\n    method: vpt\n    num_prompts: 2\n"
        "    epochs: 2\n    batch_size: 16\n    eval_batch_size: 16\n    image_size: 32\n"
        "    resize_size: 36\n    precision: fp32\n    device: cpu\n"
    )
    demo = [sys.executable, str(ROOT / "demo_flower.py"), "--config", str(tmp_path / "tiny.yml")]
    run = subprocess.run([*demo, "--exp_name", "tiny", "--data_dir", str(data), "--output_dir",
                          str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    made = upload.training_script("script_q2.py", upload.read_run(tmp_path / "run"))
    ast.parse(made)
    assert "SOURCES['kit.trainer'] = r'''" in made and "SOURCES['demo_flower']" in made
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "script_q2.py").write_text(made)
    again = subprocess.run(
        [sys.executable, "script_q2.py", "--output_dir", "rerun", "--data_dir", str(data)],
        cwd=elsewhere, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("test_flower.txt",):
        assert (elsewhere / "rerun" / name).read_text() == (tmp_path / "run" / name).read_text()
    saved = [json.loads(json.dumps(yaml.safe_load((d / "config.yaml").read_text())))
             for d in (tmp_path / "run", elsewhere / "rerun")]  # fmt: skip
    assert {k: v for k, v in saved[0].items() if k != "data_dir"} == {
        k: v for k, v in saved[1].items() if k != "data_dir"
    }
    shutil.rmtree(elsewhere)
