"""Every correct answer gets full marks.

tests/variants/<exercise>/*.py is a corpus of correct student answers written the many ways
students write them (see instructor/reference_data/, which also measures their errors to
set the tolerances). Each one must pass the student's own test (test_functions.py) and get
full marks from the autograder; a formula that is correct but loses precision on the hard
case (E[x^2] - mean^2) passes with a note that names the reason, and nothing else gets one.
"""

import importlib.util
import json
import os
import re
import sys
import unittest
import warnings
from pathlib import Path

import pytest

import test_functions
from autograder.assignment import load_assignment
from instructor import reference_data
from kit.exercise_checks import harness

ROOT = Path(__file__).resolve().parents[1]

GRADED = load_assignment(ROOT / "instructor" / "assignments" / "cs444_mp3.yml").student_exercises
VARIANTS = [v for exercise_id in GRADED for v in reference_data.corpus(exercise_id)]
METHOD = {info["id"]: f"test_{info['id']}" for info in harness.EXERCISES.values()}
REFERENCE = (ROOT / "transformer_utils.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test tensors are tiny: one thread is much faster than several competing ones (as
    in test_functions.TestClass.setUpClass, which a single TestCase.run does not call)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _module(source, tmp_path):
    path = tmp_path / "transformer_utils.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("transformer_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_graded_exercise_has_a_corpus_of_correct_answers():
    for exercise_id in GRADED:
        variants = reference_data.corpus(exercise_id)
        assert len(variants) >= 6, f"{exercise_id}: only {len(variants)} correct variants"
        for v in variants:
            source = v.source()
            assert source != REFERENCE
            assert all(line.strip() in source for line in v.body.splitlines()), v.path


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v.exercise}-{v.name}")
def test_correct_variant_passes_the_local_test(variant, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_utils", _module(variant.source(), tmp_path))
    monkeypatch.setattr(harness, "OUTCOMES", {})
    result = unittest.TestResult()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test_functions.TestClass(METHOD[variant.exercise]).run(result)
    problems = [message for _, message in result.failures + result.errors]
    assert not problems, problems[0]
    notes = [str(w.message) for w in caught if issubclass(w.category, harness.PrecisionNote)]
    if variant.precision_note:
        assert len(notes) == 1 and variant.precision_note in notes[0], notes
        assert "passes (full marks)" in notes[0] and "case 3" in notes[0], notes[0]
    else:
        assert not notes, notes


def _uploads():
    """One upload per pair of answers (a SelfAttention variant with a LayerNorm variant, the
    shorter list reused), plus two that must fail: code that raises, and a LayerNorm that is
    almost right (it must not be told it made a known mistake)."""
    by_exercise = [reference_data.corpus(e) for e in ("self_attention", "layer_norm")]
    uploads = {}
    for i in range(max(map(len, by_exercise))):
        sa, ln = (vs[i % len(vs)] for vs in by_exercise)
        uploads[f"{i:02d}-{sa.name}+{ln.name}"] = (ln.source(sa.source()), ln.precision_note)
    crash = REFERENCE.replace(
        "torch.bmm(q, k.transpose(1, 2))", "torch.bmm(q, k.T)"
    ).replace(  # and a LayerNorm 3e-5 off: wrong, but close to no known mistake
        "return x_hat * self.w + self.b  # (B, T, C)",
        "return (x_hat * self.w + self.b) * (1 + 3e-5)",
    )
    uploads["crash+almost_right"] = (crash, None)
    mistakes = REFERENCE.replace(
        "weights = self.softmax(scores)",
        "weights = self.softmax(scores * math.sqrt(self.query_dim)) / math.sqrt(self.query_dim)",
    ).replace(
        "x_hat = (x - mean) / torch.sqrt(var + self.eps)",
        "x_hat = x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + self.eps)",
    )
    uploads["known_mistakes"] = (mistakes, None)
    return uploads


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI runs as root)")
def test_every_correct_variant_gets_full_marks_from_the_autograder(tmp_path):
    from autograder.grade import GradeOptions
    from autograder.grade_all import grade_all

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "test_flower.txt").write_text("".join(f"{i % 102}\n" for i in range(50)))
    (labels / "test_pixmo.txt").write_text("".join(f"{i % 20}\n" for i in range(50)))
    uploads = _uploads()
    for name, (source, _) in uploads.items():
        (tmp_path / "subs" / name).mkdir(parents=True)
        (tmp_path / "subs" / name / "transformer_utils.py").write_text(source, encoding="utf-8")
    grade_all(tmp_path / "subs", labels, tmp_path / "grades.csv", jobs=2,
              results_dir=tmp_path / "out", options=GradeOptions(quiet=True))  # fmt: skip

    def feedback(name):
        tests = json.loads((tmp_path / "out" / name / "results.json").read_text())["tests"]
        return {t["number"]: t for t in tests if t["number"] in ("1.1", "1.2")}

    for name, (_, note) in uploads.items():
        if name in ("crash+almost_right", "known_mistakes"):
            continue
        got = feedback(name)
        for number in ("1.1", "1.2"):
            assert got[number]["score"] == got[number]["max_score"] == 2, got[number]["output"]
        assert ("A likely reason: cancellation" in got["1.2"]["output"]) == bool(note), got["1.2"]
        assert "Note" not in got["1.1"]["output"]

    got = feedback("crash+almost_right")
    crash, almost = got["1.1"]["output"], got["1.2"]["output"]
    assert got["1.1"]["score"] == 0 and got["1.2"]["score"] == 0
    assert "case 1 of 5" in crash and "x (4, 7, 24)" in crash and "RuntimeError" in crash, crash
    # the student's line, and none of the harness's frames (the x.T warning that torch printed
    # follows, also shown at the student's line)
    assert re.search(
        r"at transformer_utils\.py:\d+ in forward:  scores = torch\.bmm\(q, k\.T\)", crash
    )
    assert "test_functions.py" not in crash and "sandbox_child" not in crash, crash
    assert "wrong values" in almost and "known mistake" not in almost, almost

    got = feedback("known_mistakes")
    assert "known mistake: the scale is applied after the softmax" in got["1.1"]["output"]
    assert "known mistake: RMSNorm instead of LayerNorm" in got["1.2"]["output"]
