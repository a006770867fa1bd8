"""Unit tests of the autograder's trusted parts: prediction files, scoring, comparison,
results.json, declarations, the Gradescope zip, bulk grading and failing closed."""

import json
import os
import re
import shutil
import tempfile
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from autograder import compare
from autograder.assignment import load_assignment
from autograder.declarations import read_declarations
from autograder.grade import GradeOptions, grade
from autograder.grade_all import grade_all, merge_csv
from autograder.predictions import PredictionError, credit, parse_lines, read_capped
from autograder.results import write_results

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = load_assignment(ROOT / "instructor" / "assignments" / "cs444_mp3.yml")


# ---------------------------------------------------------------- prediction files
@pytest.mark.parametrize(
    "data",
    [
        b"1\n2\n3\n",
        b"1\n2\n3",
        b"1\r\n2\r\n3\r\n",
        b"\xef\xbb\xbf1\n2\n3\n",
        b"\xef\xbb\xbf1\r\n2\r\n3",
    ],
)
def test_accepted_prediction_formats(data):
    assert parse_lines(data, 10) == [1, 2, 3]


@pytest.mark.parametrize(
    "data, line, words",
    [
        (b"prediction\n1\n", 1, "not a class number"),
        (b"1\n\n2\n", 2, "not a class number"),
        (b"1\n 2\n", 2, "not a class number"),
        (b"1\n2\n-1\n", 3, "not a class number"),
        (b"1\n2.0\n", 2, "not a class number"),
        (b"1\n10\n", 2, "out of range"),
        (b"1\n2\n3\n4\n", 4, "more predictions"),
        (b"1\n\xc3\xa9\n", 2, "non-ASCII"),
    ],
)
def test_rejected_prediction_files_name_the_line(data, line, words):
    with pytest.raises(PredictionError, match=words) as info:
        parse_lines(data, 10, max_lines=3)
    assert f"line {line}:" in str(info.value)


def test_oversized_file_is_refused_without_reading(tmp_path):
    big = tmp_path / "test_flower.txt"
    with open(big, "wb") as fh:
        fh.truncate(50 * 1024**3)  # sparse: reading it would take minutes
    with pytest.raises(PredictionError, match="too large"):
        read_capped(big, 1_000_000)


def test_symlinked_prediction_file_is_refused(tmp_path):
    (tmp_path / "labels.txt").write_text("1\n")
    (tmp_path / "test_flower.txt").symlink_to(tmp_path / "labels.txt")
    with pytest.raises(PredictionError, match="symbolic links"):
        read_capped(tmp_path / "test_flower.txt", 1000)


def test_threshold_is_exact_and_credit_falls_linearly():
    t, f = Fraction("0.92"), Fraction("0.60")
    assert credit(92, 100, t, f, 4) == 4.0  # exactly at the threshold
    assert credit(1507, 1638, t, f, 4) == 4.0  # 1507 * 25 >= 23 * 1638
    assert 3.9 < credit(1506, 1638, t, f, 4) < 4.0  # one answer short of the threshold
    assert credit(225, 500, Fraction("0.45"), Fraction("0.18"), 4) == 4.0
    assert credit(76, 100, t, f, 4) == pytest.approx(2.0)  # half-way between floor and threshold
    assert credit(60, 100, t, f, 4) == 0.0
    assert credit(10, 100, t, f, 4) == 0.0
    assert credit(0, 0, t, f, 4) == 0.0


# ---------------------------------------------------------------- comparison
TARGET = {"c0": np.ones((2, 3), np.float32)}
TYPES = {"c0": "torch.Tensor"}


@pytest.mark.parametrize(
    "out, types, words",
    [
        ({"c0": np.ones((2, 3), np.float32)}, TYPES, None),
        ({"c0": np.ones((1, 3), np.float32)}, TYPES, "expected shape"),
        ({"c0": np.ones((2, 3), np.float64)}, TYPES, "dtype"),
        ({"c0": np.full((2, 3), np.nan, np.float32)}, TYPES, "NaN"),
        ({"c0": np.full((2, 3), 2, np.float32)}, TYPES, "wrong values"),
        ({"c0": np.ones((2, 3), np.float32)}, {"c0": "x._LyingTensor"}, "plain torch.Tensor"),
        ({}, {"c0": "builtins.object"}, "expected a torch.Tensor"),
        ({"c0": np.ones((2, 3), np.float32), "c1": np.ones(1)}, TYPES, "more outputs"),
    ],
)
def test_check_outputs(out, types, words):
    ok, message = compare.check_outputs(out, types, TARGET, 1e-5, 1e-6)
    assert ok == (words is None), message
    if words:
        assert words in message


def test_matching_mistake_names_it():
    mistakes = {"unbiased variance": {"c0": np.full((2, 3), 2, np.float32)}}
    assert (
        compare.matching_mistake({"c0": np.full((2, 3), 2, np.float32)}, mistakes, 1e-5, 1e-6)
        == "unbiased variance"
    )


def test_a_mistake_is_named_only_when_close_to_it_and_far_from_the_reference():
    target = {"c0": np.ones((2, 3), np.float32)}
    near = {"eps outside the square root": {"c0": np.full((2, 3), 1 + 5e-5, np.float32)}}
    almost = {"c0": np.full((2, 3), 1 + 4e-5, np.float32)}  # fails, but is no known mistake
    assert compare.matching_mistake(almost, near, 1e-5, 1e-6, target) is None
    far = {"unbiased variance": {"c0": np.full((2, 3), 1.5, np.float32)}}
    assert compare.matching_mistake({"c0": far["unbiased variance"]["c0"] + 1e-6}, far, 1e-5,
                                    1e-6, target) == "unbiased variance"  # fmt: skip
    assert compare.matching_mistake(almost, far, 1e-5, 1e-6, target) is None


def test_each_case_has_its_tolerance_and_a_hard_case_passes_with_a_note():
    zeros = np.zeros((2, 3), np.float32)
    targets, types = (
        {"c0/out": zeros, "c1/out": zeros},
        {"c0/out": "torch.Tensor", "c1/out": "torch.Tensor"},
    )
    tolerances = [
        {"rtol": 0.0, "atol": 1e-6, "strict_atol": None, "note": ""},
        {"rtol": 0.0, "atol": 1e-3, "strict_atol": 1e-5, "note": "cancellation in E[x^2] - mean^2"},
    ]
    outputs = {"c0/out": zeros, "c1/out": zeros + 1e-4}
    passed, message = compare.grade_outputs(outputs, types, targets, {}, 0.0, 1e-6, tolerances)
    assert passed and "case 2" in message and "A likely reason: cancellation" in message, message
    passed, message = compare.grade_outputs({"c0/out": zeros, "c1/out": zeros}, types, targets,
                                            {}, 0.0, 1e-6, tolerances)  # fmt: skip
    assert passed and "Note" not in message
    outputs = {"c0/out": zeros + 1e-4, "c1/out": zeros}
    passed, message = compare.grade_outputs(outputs, types, targets, {}, 0.0, 1e-6, tolerances)
    assert not passed and message.startswith("case 1, output out: wrong values"), message


# ---------------------------------------------------------------- results.json
def test_results_are_valid_json_even_with_nan(tmp_path):
    path = write_results(
        tmp_path / "r" / "results.json",
        {"tests": [{"name": "a", "score": float("nan"), "max_score": 2}]},
    )
    data = json.loads(path.read_text())
    assert data["tests"][0]["score"] == 0.0 and data["score"] == 0.0
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left


def test_results_written_when_the_grader_itself_fails(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    results = tmp_path / "results.json"
    grade(sub, results, tmp_path / "no-labels-here", GradeOptions(quiet=True))
    data = json.loads(results.read_text())
    assert "autograder failed" in data["output"] and data["score"] == 0


def test_cli_exits_nonzero_when_the_grader_itself_fails(tmp_path, capsys):
    from autograder.__main__ import main

    (tmp_path / "subs" / "ann").mkdir(parents=True)
    no_labels = str(tmp_path / "no-labels-here")
    results = tmp_path / "results.json"
    assert main(["grade", str(tmp_path / "subs" / "ann"), "--results", str(results),
                 "--labels", no_labels]) == 1  # fmt: skip
    assert "no-labels-here" in capsys.readouterr().out and results.is_file()
    assert main(["grade-all", str(tmp_path / "subs"), "--csv", str(tmp_path / "g.csv"),
                 "--labels", no_labels]) == 1  # fmt: skip
    assert "1 submissions could not be graded (ann)" in capsys.readouterr().err


# ---------------------------------------------------------------- assignment file
@pytest.mark.parametrize(
    "text, words",
    [
        ("predictions: [{file: a.txt, points: 4, num_classes: 3}]", "predictions[0]: missing key 'threshold'"),
        ("predictions: [a.txt]", "predictions[0]: expected a mapping"),
        ("required_files: [script.py, 3]", "required_files[1]: expected a mapping"),
        ("sandbox: {timeout_s: soon}", "sandbox.timeout_s: 'soon' is not a number"),
        ("predictions: {file: a.txt}", "predictions must be a list"),
        ("studnet_exercises: [layer_norm]", "unknown key(s) studnet_exercises"),
    ],
)  # fmt: skip
def test_malformed_assignment_is_one_line_naming_the_entry(tmp_path, text, words):
    from autograder.assignment import AssignmentError

    (tmp_path / "a.yml").write_text(text + "\n")
    with pytest.raises(AssignmentError, match=re.escape(words)) as info:
        load_assignment(tmp_path / "a.yml")
    assert "\n" not in str(info.value)


def test_default_assignment_is_the_original_one():
    a = ASSIGNMENT
    assert a.student_exercises == ["self_attention", "layer_norm"]
    # Every other exercise is stubbed practice: their solutions would give the graded ones away.
    declared = set(read_declarations(ROOT / "test_functions.py"))
    assert set(a.stubbed_exercises(declared)) == declared
    assert a.exercise_points == {"self_attention": 2, "layer_norm": 2}
    parts = {p.file: (p.points, p.threshold) for p in a.predictions}
    assert parts == {
        "test_flower.txt": (4, Fraction("0.92")),
        "test_pixmo.txt": (4, Fraction("0.45")),
    }
    assert [r.file for r in a.required_files] == ["script_q2.py", "script_q3.py"]


# ---------------------------------------------------------------- declarations
def test_declarations_are_read_without_importing():
    decls = read_declarations(ROOT / "test_functions.py")
    assert decls["self_attention"].number == "1.1" and decls["self_attention"].points == 2
    assert decls["layer_norm"].name == "LayerNorm" and decls["layer_norm"].rtol == 1e-5
    assert set(ASSIGNMENT.student_exercises) <= set(decls)


# ---------------------------------------------------------------- Gradescope zip
@pytest.fixture
def labels(tmp_path):
    d = tmp_path / "labels"
    d.mkdir()
    (d / "test_flower.txt").write_text("".join(f"{i % 102}\n" for i in range(200)))
    (d / "test_pixmo.txt").write_text("".join(f"{i % 20}\n" for i in range(100)))
    return d


def test_gradescope_zip_is_complete_reproducible_and_solution_free(tmp_path, labels):
    from instructor.gradescope import build_zip

    build_zip(tmp_path / "a.zip", labels)
    build_zip(tmp_path / "b.zip", labels)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        names = set(zf.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
        for name in ("setup.sh", "run_autograder"):
            assert name in names and modes[name] & 0o111
        assert {
            "labels/test_flower.txt",
            "labels/test_pixmo.txt",
            "test_functions.py",
            "kit/__init__.py",
            "kit/exercise_checks/runners.py",
            "kit/exercise_checks/forbidden.py",
            "autograder/assignment.yml",
            "autograder/__main__.py",
        } <= names
        assert not any(
            n.startswith("kit/") and "exercise_checks" not in n and n != "kit/__init__.py"
            for n in names
        ), "only the exercise checks of kit/ ship"
        for ex in ASSIGNMENT.student_exercises:
            assert f"autograder/reference_data/{ex}.pkl" in names
            assert f"autograder/prepared/{ex}/targets.npz" in names
        assert not any(Path(n).name == "transformer_utils.py" for n in names)
        for name in names:
            if name.endswith(".py"):
                assert "# BEGIN SOLUTION " not in zf.read(name).decode().replace(
                    '"# BEGIN SOLUTION <', ""
                )
        assert "torch" in zf.read("setup.sh").decode() and "cpu" in zf.read("setup.sh").decode()


# ---------------------------------------------------------------- bulk grading (no sandbox)
def test_grade_all_writes_results_and_csv(tmp_path, labels):
    subs = tmp_path / "subs"
    for name, flower in (("ann", "good"), ("ben", "bad")):
        (subs / name).mkdir(parents=True)
        text = (labels / "test_flower.txt").read_text() if flower == "good" else "0\n" * 200
        (subs / name / "test_flower.txt").write_text(text)
    grade_all(
        subs,
        labels,
        tmp_path / "grades.csv",
        jobs=2,
        results_dir=tmp_path / "out",
        options=GradeOptions(quiet=True),
    )
    rows = (tmp_path / "grades.csv").read_text().splitlines()
    assert rows[0].startswith("submission,score,max_score,") and len(rows) == 3
    ann = json.loads((tmp_path / "out" / "ann" / "results.json").read_text())
    flower = next(t for t in ann["tests"] if "test_flower.txt" in t["name"])
    assert flower["score"] == 4
    assert ann["leaderboard"][0]["name"] == "Flower accuracy"
    assert [t["number"] for t in ann["tests"]] == ["1.1", "1.2", "2.1", "2.2", "3.1", "3.2"]
    merge_csv(tmp_path / "merged.csv", [tmp_path / "grades.csv"])
    assert (tmp_path / "merged.csv").read_text().splitlines()[1:] == rows[1:]


# ---------------------------------------------------------------- failing closed
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_without_namespaces_an_unprotected_layout_is_refused(tmp_path, labels):
    """A kit (with the solution) that the sandbox user can read: the privilege-drop-only mode
    must refuse. The test lays that kit out itself, world-readable in a fresh folder of /tmp,
    so the outcome does not depend on where this checkout lives (a 0700 home protects it)."""
    open_dir = Path(tempfile.mkdtemp(prefix="ag-open-", dir="/tmp"))
    try:
        kit = open_dir / "kit"
        kit.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in (
            "autograder",
            "instructor",
            "kit",
            "test_functions.py",
            "transformer_utils.py",
        ):
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, kit / name, ignore=ignore)
            else:
                shutil.copy2(ROOT / name, kit / name)
        for folder, _, files in os.walk(open_dir):
            os.chmod(folder, 0o755)
            for f in files:
                os.chmod(os.path.join(folder, f), 0o644)
        sub = tmp_path / "sub"
        sub.mkdir()
        (sub / "transformer_utils.py").write_text((ROOT / "transformer_utils.py").read_text())
        opts = GradeOptions(namespaces=False, quiet=True, kit_root=str(kit))
        res = grade(sub, tmp_path / "results.json", labels, opts)
    finally:
        shutil.rmtree(open_dir)
    ex = [t for t in res["tests"] if "SelfAttention" in t["name"]][0]
    assert ex["score"] == 0 and "refusing to run student code" in ex["output"]
    assert str(kit / "transformer_utils.py") in ex["output"] or str(kit) in ex["output"]


def test_slurm_array_script_splits_the_folders_and_merges(tmp_path, labels):
    """Run grade_array.sbatch as two array tasks would (no Slurm needed), then merge."""
    import subprocess
    import sys

    subs = tmp_path / "subs"
    names = [f"s{i:02d}" for i in range(5)]
    for name in names:
        (subs / name).mkdir(parents=True)
        (subs / name / "test_pixmo.txt").write_text((labels / "test_pixmo.txt").read_text())
    out = tmp_path / "out"
    for task in (0, 1):
        env = dict(os.environ, SUBMISSIONS=str(subs), LABELS=str(labels), OUT=str(out),
                   SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT="2",
                   SLURM_CPUS_PER_TASK="2", SLURM_SUBMIT_DIR=str(ROOT),
                   PYTHON=sys.executable)  # the kit's environment, activated or not  # fmt: skip
        proc = subprocess.run(["bash", str(ROOT / "autograder" / "grade_array.sbatch")], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    parts = sorted(out.glob("grades-*.csv"))
    assert [len(p.read_text().splitlines()) - 1 for p in parts] == [3, 2]
    from autograder.__main__ import main  # (the merge runs here: no torch, no sandbox)

    assert main(["merge-csv", str(out / "grades.csv"), *map(str, parts)]) == 0
    rows = (out / "grades.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == names
    assert all((out / "results" / n / "results.json").is_file() for n in names)


def test_grade_all_csv_says_present_or_missing_and_the_summary_reads_top_down():
    """A required file (0 points) reads present/missing in grades.csv, not 0 either way; the
    console summary starts with the grader's header, ends with the total, and elides long
    outputs with a pointer to --full-output."""
    from autograder.grade import REQUIRED_FILE_TAG, summary
    from autograder.grade_all import _cell

    present = {"score": 0.0, "max_score": 0.0, "status": "passed", "tags": [REQUIRED_FILE_TAG]}
    missing = dict(present, status="failed")
    assert (_cell(present), _cell(missing)) == ("present", "missing")
    assert _cell({"score": 1.5, "max_score": 2.0, "status": "failed"}) == "1.5"
    results = {
        "output": "Autograder for X.",
        "tests": [{"name": "t", "score": 1, "max_score": 2, "output": "\n".join("abcdefghij")}],
        "execution_time": 1.0,
    }
    text = summary(results).splitlines()
    assert text[0] == "Autograder for X." and text[-1].startswith("Total: 1/2")
    assert "4 more line(s): --full-output shows them" in text[-2]
    assert len(summary(results, None).splitlines()) == len(text) + 3  # all 10 lines, no pointer
