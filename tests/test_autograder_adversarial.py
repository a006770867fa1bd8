"""The adversarial suite: hostile and broken submissions, each with its expected outcome.

Every file in tests/submissions/ is one submission (see tests/submissions/README.md). They are
graded at once, in parallel, exactly as ``python -m autograder grade-all`` does, with a short
per-exercise timeout; then each case's results.json is checked against its EXPECT, and the
whole run against things no submission may achieve: a forged or invalid results.json, a
surviving process of the sandbox users, or a changed grader/kit file.

Two runs, the same checks:

* ``sample`` (fast tier): the correct upload and a few hostile ones, in one grading run. Each
  upload pays one sandbox start (Python + torch), so attacks that hit different parts are
  combined into one upload ("a+b": both case files appended, their EXPECTs merged): an
  infinite loop (SelfAttention) with a forbidden op (LayerNorm) and two import-time attacks
  that must change nothing, and a results forger that then exits at import; two broken
  prediction uploads need no sandbox at all.
* ``corpus`` (slow tier): every case file, each its own upload.
"""

import ast
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autograder.grade import GradeOptions
from autograder.grade_all import grade_all

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "tests" / "submissions"
HIDDEN = ROOT / "autograder" / "reference_data"
CASES = sorted(p.stem for p in SUBMISSIONS.glob("*.py"))
PARTS = {  # EXPECT key -> words that identify the test in results.json
    "self_attention": "SelfAttention",
    "layer_norm": "LayerNorm",
    "test_flower.txt": "test_flower.txt",
    "test_pixmo.txt": "test_pixmo.txt",
}
SAMPLE = [  # the fast tier's uploads: 3 sandboxes, 2 prediction-only uploads
    "correct",
    "infinite_loop+forbidden_op+forge_results_leftover+edit_grader_files",
    "forge_results_direct+exit_at_import",
    "pred_header",
    "symlink_predictions",
]
JOBS = 3
TIMEOUT_S = 3
SAMPLE_TIMEOUT_S = 2  # the infinite loop costs this much wall-clock time
N_FLOWER, N_PIXMO = 100, 50

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI runs as root)"),
]
RUNS = ["sample", pytest.param("corpus", marks=pytest.mark.slow)]


def _parts(case):
    """The case files of a (possibly combined, "a+b") case."""
    return case.split("+")


def _file_spec(stem):
    """The module-level literals of a case file (EXPECT, REPLACE, ...), read with ast."""
    tree = ast.parse((SUBMISSIONS / f"{stem}.py").read_text())
    spec = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                spec[name] = ast.literal_eval(node.value)
    return spec


def _spec(case):
    """A case's spec; a combined case merges those of its files, which must attack different
    parts (an EXPECT key, prediction file or symlink is set by one file only)."""
    names = _parts(case)
    if len(names) == 1:
        return _file_spec(case)
    spec = {}
    for name in names:
        one = _file_spec(name)
        assert not {"REPLACE", "NO_SOURCE"} & set(one), f"{name} cannot be combined"
        for key, value in one.items():
            assert not set(spec.get(key, {})) & set(value), f"{case}: {key} set twice"
            spec[key] = {**spec.get(key, {}), **value}
    return spec


def _prediction_variant(variant, labels, num_classes):
    wrong = [(y + 1) % num_classes for y in labels]
    lines = [str(y) for y in labels]
    if variant == "all_zero":
        return "".join("0\n" for _ in labels).encode()
    if variant == "short":
        return "".join(f"{y}\n" for y in lines[:90]).encode()
    if variant == "header":
        return ("prediction\n" + "".join(f"{y}\n" for y in lines)).encode()
    if variant == "out_of_range":
        lines[6] = str(num_classes)
        return "".join(f"{y}\n" for y in lines).encode()
    if variant == "huge":
        return b"1\n" * 10_000_000
    if variant in ("at_threshold", "below_threshold"):
        k = 92 if variant == "at_threshold" else 91
        return "".join(f"{y}\n" for y in labels[:k] + wrong[k:]).encode()
    if variant == "crlf_bom":
        return b"\xef\xbb\xbf" + "".join(f"{y}\r\n" for y in lines).encode()
    if variant == "blank_line":
        lines[4] = ""
        return "".join(f"{y}\n" for y in lines).encode()
    if variant == "negative":
        lines[2] = "-1"
        return "".join(f"{y}\n" for y in lines).encode()
    if variant == "huge_number":
        lines[3] = "9" * 5000
        return "".join(f"{y}\n" for y in lines).encode()
    raise ValueError(variant)


def _fingerprint():
    """Hashes of the files edit_grader_files.py attacks (the rest of the kit may legitimately
    be regenerated while the suite runs on a shared machine)."""
    files = [
        ROOT / "autograder" / "grade.py",
        ROOT / "autograder" / "compare.py",
        ROOT / "test_functions.py",
        ROOT / "kit" / "exercise_checks" / "runners.py",
        HIDDEN / "self_attention.pkl",
    ]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _processes_of(uids):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid in uids:
                    found.append(pid)
            except OSError:
                pass
    return found


def _build(base, cases):
    """Write the uploads of ``cases`` under ``base``; return (subs, labels, results) dirs."""
    subs, labels_dir, results_dir = base / "subs", base / "labels", base / "results"
    labels_dir.mkdir()
    rng = random.Random(0)
    labels = {
        "test_flower.txt": ([rng.randrange(1, 102) for _ in range(N_FLOWER)], 102),
        "test_pixmo.txt": ([rng.randrange(1, 20) for _ in range(N_PIXMO)], 20),
    }
    for name, (values, _) in labels.items():
        (labels_dir / name).write_text("".join(f"{v}\n" for v in values))
    reference = (ROOT / "transformer_utils.py").read_text()
    for case in cases:
        spec = _spec(case)
        sub = subs / case
        sub.mkdir(parents=True)
        paths = {
            "@RESULTS@": str(results_dir / case / "results.json"),
            "@HIDDEN@": str(HIDDEN),
            "@LABELS@": str(labels_dir),
            "@KIT@": str(ROOT),
            "@SUBMISSION@": str(sub),
        }

        def fill(text, paths=paths):
            for key, value in paths.items():
                text = text.replace(key, value)
            return text

        if "REPLACE" in spec:
            source = spec["REPLACE"]
        else:
            source = reference
            for name in _parts(case):
                source += "\n\n# ---- adversarial case ----\n"
                source += fill((SUBMISSIONS / f"{name}.py").read_text())
        if not spec.get("NO_SOURCE"):
            (sub / "transformer_utils.py").write_text(source)
        for name, (values, num_classes) in labels.items():
            variant = spec.get("PREDICTIONS", {}).get(name)
            data = (
                _prediction_variant(variant, values, num_classes)
                if variant
                else "".join(f"{v}\n" for v in values).encode()
            )
            (sub / name).write_bytes(data)
        for name in ("script_q2.py", "script_q3.py"):
            (sub / name).write_text("print('my training script')\n")
        for name, target in spec.get("SYMLINKS", {}).items():
            (sub / name).unlink(missing_ok=True)
            (sub / name).symlink_to(fill(target))
    return subs, labels_dir, results_dir


def _grade_run(base, cases, timeout_s, wait_s):
    """Grade ``cases`` in one grade-all run; what the checks below need."""
    subs, labels_dir, results_dir = _build(base, cases)
    before = _fingerprint()
    start = time.monotonic()
    grade_all(
        subs,
        labels_dir,
        base / "grades.csv",
        jobs=JOBS,
        results_dir=results_dir,
        options=GradeOptions(timeout_s=timeout_s, quiet=True),
    )
    elapsed = time.monotonic() - start
    time.sleep(wait_s)  # give any leftover forger time to act (it tries every 0.25 s)
    results = {}
    for case in cases:
        text = (results_dir / case / "results.json").read_text()
        results[case] = (text, json.loads(text))
    # the sandbox users this run used (each sandbox locks its own; see sandbox.acquire_uid)
    uids = {int(u) for _, res in results.values() for u in re.findall(r"uid (\d+)", res["output"])}
    assert uids and 0 not in uids
    return {
        "cases": cases,
        "results": results,
        "before": before,
        "after": _fingerprint(),
        "leftovers": _processes_of(uids),
        "elapsed": elapsed,
        "csv": base / "grades.csv",
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return _grade_run(tmp_path_factory.mktemp("sample"), SAMPLE, SAMPLE_TIMEOUT_S, 0.5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _grade_run(tmp_path_factory.mktemp("adversarial"), CASES, TIMEOUT_S, 2.0)


@pytest.fixture(params=RUNS)
def graded(request):
    """The fast sample, or (slow tier) the whole corpus."""
    return request.getfixturevalue(request.param)


def test_enough_cases():
    assert len(CASES) >= 25


def test_the_sample_is_graded_by_the_corpus_rules():
    """Every file of a sample case is in the corpus, the hostile ones included."""
    assert {name for case in SAMPLE for name in _parts(case)} <= set(CASES)
    expect = {c: _spec(c)["EXPECT"] for c in SAMPLE}
    assert expect["infinite_loop+forbidden_op+forge_results_leftover+edit_grader_files"] == {
        "self_attention": (0, "Timed out"),
        "layer_norm": (0, "forbidden"),
    }
    assert expect["forge_results_direct+exit_at_import"] == _file_spec("exit_at_import")["EXPECT"]


OUTCOMES = [pytest.param("sample", case, id=f"sample-{case}") for case in SAMPLE] + [
    pytest.param("corpus", case, id=case, marks=pytest.mark.slow) for case in CASES
]


@pytest.mark.parametrize("run, case", OUTCOMES)
def test_case_outcome(request, run, case):
    graded = request.getfixturevalue(run)
    text, res = graded["results"][case]
    assert "FORGED" not in text and res.get("score") != 999, f"{case}: results.json was forged"
    assert res["tests"], res["output"]
    # strict JSON in valid UTF-8: no lone surrogate, not even escaped
    json.dumps(res, ensure_ascii=False).encode("utf-8", "strict")
    expect = _spec(case).get("EXPECT", {})
    for key, words in PARTS.items():
        matching = [t for t in res["tests"] if words in t["name"]]
        assert len(matching) == 1, (key, [t["name"] for t in res["tests"]])
        test = matching[0]
        points, needle = expect.get(key, (test["max_score"], ""))
        assert test["score"] == pytest.approx(points), f"{case}/{key}: {test['output']}"
        assert needle.lower() in test["output"].lower(), f"{case}/{key}: {test['output']}"
    assert res["score"] == pytest.approx(sum(t["score"] for t in res["tests"]))


def test_a_time_out_names_the_students_line(sample):
    """The supervisor asks a timed-out exercise for its stacks before killing it."""
    _, res = sample["results"][SAMPLE[1]]
    sa = next(t for t in res["tests"] if "SelfAttention" in t["name"])
    assert "while running case 1 of" in sa["output"], sa["output"]
    where = r"It was running transformer_utils\.py:\d+ in _forward:  (pass|while True:)"
    assert re.search(where, sa["output"]), sa["output"]


def test_correct_submission_gets_full_marks(graded):
    _, res = graded["results"]["correct"]
    assert res["score"] == sum(t["max_score"] for t in res["tests"]) == 12


def test_no_process_of_the_sandbox_users_survives(graded):
    assert graded["leftovers"] == []


def test_grader_and_kit_files_unchanged(graded):
    assert graded["before"] == graded["after"]


@pytest.mark.slow
def test_output_flood_is_capped_and_reported(corpus):
    _, res = corpus["results"]["output_flood"]
    assert "printed" in res["output"] and len(json.dumps(res)) < 200_000


def test_protections_are_reported(graded):
    _, res = graded["results"]["correct"]
    assert "unprivileged user: uid" in res["output"]
    assert "verified by probe" in res["output"]


def test_csv_has_one_row_per_case(graded):
    rows = graded["csv"].read_text().splitlines()
    assert len(rows) == len(graded["cases"]) + 1


@pytest.mark.slow
def test_gradescope_layout_without_namespaces(tmp_path):
    """The fallback used where namespaces are unavailable (e.g. Gradescope's container):
    the zip unpacked into <tmp>/autograder/source, paths made root-only as run_autograder
    does, privilege drop only. A correct upload gets full marks; reading the hidden data fails."""
    import shutil
    import zipfile

    from instructor.gradescope import build_zip

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "test_flower.txt").write_text("".join(f"{i % 102}\n" for i in range(N_FLOWER)))
    (labels / "test_pixmo.txt").write_text("".join(f"{i % 20}\n" for i in range(N_PIXMO)))
    build_zip(tmp_path / "ag.zip", labels)
    top = tmp_path / "autograder"
    source = top / "source"
    source.mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "ag.zip") as zf:
        zf.extractall(source)
    reference = (ROOT / "transformer_utils.py").read_text()
    attack = (SUBMISSIONS / "read_hidden_data.py").read_text()
    attack = attack.replace("@HIDDEN@", str(source / "autograder" / "reference_data"))
    outcomes = {}
    for name, code in (("correct", ""), ("read_hidden_data", attack)):
        sub = top / "submission" / name
        sub.mkdir(parents=True)
        (sub / "transformer_utils.py").write_text(reference + "\n\n" + code)
        for label in ("test_flower.txt", "test_pixmo.txt"):
            shutil.copyfile(labels / label, sub / label)
        for script in ("script_q2.py", "script_q3.py"):
            (sub / script).write_text("print('train')\n")
    (top / "results").mkdir()
    os.chmod(tmp_path, 0o711)
    os.chmod(top, 0o711)
    for path in (source, top / "submission", top / "results"):
        os.chmod(path, 0o700)
    for name in ("correct", "read_hidden_data"):
        # run from the unpacked zip, exactly as run_autograder does (minus the chmods done above)
        subprocess.run(
            [sys.executable, "-m", "autograder", "grade", str(top / "submission" / name),
             "--results", str(top / "results" / f"{name}.json"), "--labels", str(source / "labels"),
             "--no-namespaces", "--timeout", str(TIMEOUT_S)],
            cwd=source, capture_output=True, timeout=600, check=True,
        )  # fmt: skip
        outcomes[name] = json.loads((top / "results" / f"{name}.json").read_text())
    assert outcomes["correct"]["score"] == 12, outcomes["correct"]
    assert "namespaces: NOT available" in outcomes["correct"]["output"]
    assert "verified by probe" in outcomes["correct"]["output"]
    hidden = [t for t in outcomes["read_hidden_data"]["tests"] if "SelfAttention" in t["name"]][0]
    assert hidden["score"] == 0 and "hidden data not readable" in hidden["output"]


USERNS_CASES = ["correct", "read_hidden_data", "forge_results_leftover", "process_storm",
                "network_access", "kill_parent", "edit_grader_files"]  # fmt: skip


@pytest.mark.slow
def test_user_namespace_mode(tmp_path):
    """The mode used without root (e.g. Slurm nodes), forced here: same outcomes."""
    subs, labels_dir, results_dir = _build(tmp_path, USERNS_CASES)
    before = _fingerprint()
    grade_all(subs, labels_dir, tmp_path / "grades.csv", jobs=JOBS, results_dir=results_dir,
              options=GradeOptions(timeout_s=TIMEOUT_S, quiet=True, userns=True))  # fmt: skip
    time.sleep(2.0)
    for case in USERNS_CASES:
        text = (results_dir / case / "results.json").read_text()
        res = json.loads(text)
        assert "FORGED" not in text and "user namespace" in res["output"], case
        expect = _spec(case).get("EXPECT", {})
        for key, words in PARTS.items():
            test = next(t for t in res["tests"] if words in t["name"])
            points, needle = expect.get(key, (test["max_score"], ""))
            assert test["score"] == pytest.approx(points), f"{case}/{key}: {test['output']}"
            assert needle.lower() in test["output"].lower(), f"{case}/{key}: {test['output']}"
    assert _fingerprint() == before
