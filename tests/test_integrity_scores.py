"""Scores that cannot be probed: public and private labels, intervals, the upload budget,
and what each grade was computed with.

The grader runs for real here (``python -m autograder grade`` on an assignment that grades
one prediction file and runs no student code), so what is checked is what a student and an
instructor would see.
"""

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from autograder.__main__ import main
from autograder.assignment import AssignmentError, load_assignment
from autograder.budget import MetadataError, budget_status, read_metadata
from autograder.intervals import Z95, describe, half_width, wilson
from autograder.split import public_indices

N = 400  # hidden labels of the test's prediction file
ASSIGNMENT = """\
name: split test
predictions:
  - file: test_flower.txt
    name: "Flower test accuracy (test_flower.txt)"
    number: "2.1"
    points: 4
    threshold: "0.92"
    floor: "0.60"
    num_classes: 102
    leaderboard: "Flower accuracy"
{extra}
"""


# ---------------------------------------------------------------- intervals
def test_wilson_bounds_solve_their_defining_equation():
    """The Wilson bounds are the p0 where the score test is exactly at z:
    (phat - p0)^2 = z^2 p0 (1 - p0) / n. Checked on the README's case, 0.92 of 1638."""
    n, k = 1638, 1507
    phat = k / n
    for p0 in wilson(k, n):
        assert (phat - p0) ** 2 == pytest.approx(Z95**2 * p0 * (1 - p0) / n, rel=1e-9)
    low, high = wilson(k, n)
    assert low < phat < high and 0.012 < (high - low) / 2 < 0.014  # README's +-1.3 points
    assert half_width(0.92, 1638) == pytest.approx(0.0131, abs=5e-5)


def test_wilson_known_closed_form_at_a_perfect_score():
    """With every answer right the lower bound is n / (n + z^2) (closed form)."""
    low, high = wilson(10, 10)
    assert low == pytest.approx(10 / (10 + Z95**2), rel=1e-12) and high == pytest.approx(1.0)
    assert wilson(0, 10)[0] == 0.0 and wilson(0, 10)[1] == pytest.approx(1 - low)


def test_wilson_covers_the_true_accuracy_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    for p, n in ((0.92, 1638), (0.45, 819), (0.98, 200)):
        draws = rng.binomial(n, p, size=4000)
        covered = np.mean([lo <= p <= hi for lo, hi in (wilson(int(k), n) for k in draws)])
        assert 0.93 <= covered <= 0.97, (p, n, covered)


def test_describe_names_accuracy_interval_and_count():
    assert describe(1507, 1638).startswith("0.9200 (95% interval 0.905")
    assert "on 1638 images" in describe(1507, 1638)
    with pytest.raises(ValueError):
        wilson(11, 10)


# ---------------------------------------------------------------- the split
def test_split_is_deterministic_sized_and_seeded():
    a = public_indices(1638, 0.5, "test_flower.txt")
    assert a == public_indices(1638, 0.5, "test_flower.txt") and len(a) == 819
    assert a == sorted(set(a)) and all(0 <= i < 1638 for i in a)
    b = public_indices(1638, 0.5, "another seed")
    assert a != b and 300 < len(set(a) & set(b)) < 520  # about half overlap: independent
    assert len(public_indices(1638, 0.2, "s")) == 328
    assert public_indices(10, 1, "s") == list(range(10)) and public_indices(10, 0, "s") == []


def test_defaults_split_half_and_hide_the_private_part():
    part = load_assignment("cs444_mp3").predictions[0]
    assert part.public_fraction == 0.5 and part.private_visibility == "after_published"


@pytest.mark.parametrize(
    "extra, words",
    [
        ("    public_fraction: 1.5", "public_fraction: 1.5 must lie between 0 and 1"),
        ("    private_visibility: later", "private_visibility: 'later' is not one of"),
        ("submission_budget: 3", "submission_budget: write it as {count: 5"),
        ("submission_budget: {count: 0}", "count must be at least 1"),
        ("release_private: maybe", "release_private must be true or false"),
    ],
)
def test_malformed_integrity_keys_are_one_line(tmp_path, extra, words):
    path = tmp_path / "a.yml"
    path.write_text(ASSIGNMENT.format(extra=extra))
    with pytest.raises(AssignmentError) as info:
        load_assignment(path)
    assert words in str(info.value) and "\n" not in str(info.value)


def _setup(tmp_path, extra="", public_right=True, private_right=False):
    """An assignment, labels and an upload right on the public images and wrong on the
    private ones (or as asked), so that the two scores cannot be confused."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    yml = tmp_path / "a.yml"
    yml.write_text(ASSIGNMENT.format(extra=extra))
    part = load_assignment(yml).predictions[0]
    rng = random.Random(3)
    truth = [rng.randrange(102) for _ in range(N)]
    public = set(public_indices(N, part.public_fraction, part.split_seed or part.file))
    preds = [
        y
        if (i in public and public_right) or (i not in public and private_right)
        else (y + 1) % 102
        for i, y in enumerate(truth)
    ]
    labels, sub = tmp_path / "labels", tmp_path / "sub"
    labels.mkdir()
    sub.mkdir()
    (labels / "test_flower.txt").write_text("".join(f"{y}\n" for y in truth))
    (sub / "test_flower.txt").write_text("".join(f"{p}\n" for p in preds))
    return yml, labels, sub


def _grade(tmp_path, yml, labels, sub, *flags, results="results.json"):
    out = tmp_path / results
    code = main(["grade", str(sub), "--results", str(out), "--labels", str(labels),
                 "--assignment", str(yml), "--insecure", *flags])  # fmt: skip
    assert code == 0
    return json.loads(out.read_text())


def test_a_split_assignment_shows_only_public_scores(tmp_path, capsys):
    yml, labels, sub = _setup(tmp_path)
    res = _grade(tmp_path, yml, labels, sub)
    console = capsys.readouterr().out
    private, public = res["tests"]
    assert private["visibility"] == "after_published" and private["max_score"] == 4
    assert private["score"] == 0 and "private part (200 of 400" in private["output"]
    assert public["visibility"] == "visible" and public["max_score"] == 0
    assert "public part (200 of 400" in public["output"] and "accuracy 1.0000" in public["output"]
    assert "95% interval 0.98" in public["output"]
    assert res["leaderboard"][0]["value"] == 1.0  # the public part only, not 0.5 overall
    # the console (what a local run shows) hides the private score and its accuracy
    assert "accuracy 0.0000" not in console and "hidden until released: 4 points" in console
    assert "Public checks passed 1/1, scoring 0/0; 1 private part(s) worth 4 points" in console


def test_releasing_reveals_the_private_part(tmp_path, capsys):
    yml, labels, sub = _setup(tmp_path, public_right=False, private_right=True)
    res = _grade(tmp_path, yml, labels, sub, "--release-private")
    console = capsys.readouterr().out
    private, public = res["tests"]
    assert private["visibility"] == "visible" and private["score"] == 4
    assert "accuracy 1.0000" in private["output"] and "accuracy 0.0000" in public["output"]
    assert "[4/4] Flower test accuracy (test_flower.txt)" in console and "Total: 4/4" in console
    # the assignment can release too (after the deadline, on Gradescope)
    yml2, labels2, sub2 = _setup(tmp_path / "b", extra="release_private: true")
    assert _grade(tmp_path, yml2, labels2, sub2)["tests"][0]["visibility"] == "visible"


def test_an_all_public_file_is_graded_as_before(tmp_path):
    yml, labels, sub = _setup(tmp_path, extra="    public_fraction: 1")
    (only,) = _grade(tmp_path, yml, labels, sub)["tests"]
    assert only["score"] == 4 and only["visibility"] == "visible"
    assert "400 of 400" in only["output"] and "95% interval" in only["output"]


def test_a_bad_file_is_the_same_one_line_in_both_parts(tmp_path):
    yml, labels, sub = _setup(tmp_path)
    (sub / "test_flower.txt").write_text("0\nheader\n")
    private, public = _grade(tmp_path, yml, labels, sub)["tests"]
    assert private["score"] == 0 and public["status"] == "failed"
    assert "line 2: 'header' is not a class number" in public["output"] == private["output"]


# ---------------------------------------------------------------- the upload budget
def _metadata(path, created, previous):
    """Gradescope's submission_metadata.json (the fields the budget reads, and others)."""
    data = {
        "id": 123456,
        "created_at": created,
        "assignment": {"due_date": "2026-12-31T23:00:00.000000-07:00", "title": "MP3"},
        "submission_method": "upload",
        "users": [{"email": "student@example.com", "id": 1234, "name": "Student"}],
        "previous_submissions": [
            {"submission_time": t, "score": 0.0, "results": {"score": 0.0, "tests": []}}
            for t in previous
        ],
    }
    path.write_text(json.dumps(data))
    return path


SAMPLE_TIMES = [
    "2026-12-01T09:00:00.000000-07:00",  # 26 hours before: outside the period
    "2026-12-02T08:30:00.000000-07:00",
    "2026-12-02T10:15:00.000000-07:00",
]
NOW = "2026-12-02T11:00:00.000000-07:00"


def test_the_budget_counts_uploads_of_the_period(tmp_path):
    meta = read_metadata(_metadata(tmp_path / "m.json", NOW, SAMPLE_TIMES))
    status = budget_status(meta, count=3, period_hours=24)
    assert (status.attempts, status.in_period, status.left, status.over) == (4, 3, 0, False)
    assert "Upload 3 of 3 in the last 24 hours: 0 left" in status.describe()
    over = budget_status(meta, count=2, period_hours=24)
    assert over.over and "used your 2 uploads" in over.describe()
    assert "2026-12-03 08:30" in over.describe()  # when the oldest of the period expires
    assert budget_status(meta, count=2, period_hours=1).in_period == 2  # 10:15 only


def test_bad_metadata_is_one_line(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        read_metadata(tmp_path / "m.json")
    bad = _metadata(tmp_path / "n.json", NOW, ["yesterday"])
    with pytest.raises(MetadataError, match="previous_submissions\\[0\\]: 'yesterday'"):
        budget_status(read_metadata(bad), 3)


def test_over_budget_withholds_public_scores_but_grades(tmp_path):
    yml, labels, sub = _setup(tmp_path, extra="submission_budget: {count: 2, period_hours: 24}")
    meta = _metadata(tmp_path / "m.json", NOW, SAMPLE_TIMES)
    res = _grade(tmp_path, yml, labels, sub, "--metadata", str(meta), "--release-private")
    private, public = res["tests"]
    assert "used your 2 uploads" in public["output"] and "accuracy" not in public["output"]
    assert "leaderboard" not in res and private["max_score"] == 4
    assert res["extra_data"]["attempts_in_period"] == 3 and "used your 2 uploads" in res["output"]
    within = _metadata(tmp_path / "w.json", NOW, SAMPLE_TIMES[:1])
    res = _grade(tmp_path, yml, labels, sub, "--metadata", str(within))
    assert "Upload 1 of 2 in the last 24 hours: 1 left" in res["output"]
    assert "accuracy 1.0000" in res["tests"][1]["output"]


def test_grade_all_records_attempts_and_hides_private_columns(tmp_path):
    yml, labels, sub = _setup(tmp_path, extra="submission_budget: {count: 5}")
    subs, metas = tmp_path / "subs", tmp_path / "meta"
    (subs / "ann").mkdir(parents=True)
    (subs / "ann" / "test_flower.txt").write_bytes((sub / "test_flower.txt").read_bytes())
    (metas / "ann").mkdir(parents=True)
    _metadata(metas / "ann" / "submission_metadata.json", NOW, SAMPLE_TIMES)
    (subs / "ben").mkdir()  # no metadata: its attempts stay empty
    (subs / "ben" / "test_flower.txt").write_bytes((sub / "test_flower.txt").read_bytes())
    args = ["grade-all", str(subs), "--labels", str(labels), "--assignment", str(yml),
            "--insecure", "--metadata-dir", str(metas), "--results-dir", str(tmp_path / "out")]  # fmt: skip
    assert main([*args, "--csv", str(tmp_path / "g.csv")]) == 0
    rows = {r["submission"]: r for r in csv.DictReader(open(tmp_path / "g.csv"))}
    assert rows["ann"]["attempts"] == "4" and rows["ann"]["attempts_in_period"] == "3"
    assert rows["ben"]["attempts"] == ""
    assert rows["ann"]["Flower test accuracy (test_flower.txt)"] == "hidden"
    assert rows["ann"]["max_score"] == "0"  # only the shown (public) tests count
    assert main([*args, "--csv", str(tmp_path / "r.csv"), "--release-private"]) == 0
    rows = {r["submission"]: r for r in csv.DictReader(open(tmp_path / "r.csv"))}
    assert rows["ann"]["Flower test accuracy (test_flower.txt)"] == "0"
    assert rows["ann"]["max_score"] == "4" and len(rows["ann"]["hidden_data"]) == 12


# ---------------------------------------------------------------- what it was graded with
def test_results_record_the_kit_and_the_hidden_data(tmp_path):
    yml, labels, sub = _setup(tmp_path)
    extra = _grade(tmp_path, yml, labels, sub)["extra_data"]
    assert extra["kit_version"].startswith("0.1.0+code.")
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(extra["kit_commit"].split("+")[0]) == 40
    assert len(extra["hidden_data_sha256"]) == 64


def test_a_regrade_with_other_hidden_data_says_so(tmp_path):
    yml, labels, sub = _setup(tmp_path)
    first = _grade(tmp_path, yml, labels, sub)
    again = _grade(tmp_path, yml, labels, sub)
    assert "other hidden data" not in again["output"]
    assert again["extra_data"]["hidden_data_sha256"] == first["extra_data"]["hidden_data_sha256"]
    flipped = (labels / "test_flower.txt").read_text().replace("\n1\n", "\n2\n", 1)
    (labels / "test_flower.txt").write_text(flipped)
    other = _grade(tmp_path, yml, labels, sub)
    assert "graded with other hidden data" in other["output"]
    assert other["extra_data"]["hidden_data_sha256"] != first["extra_data"]["hidden_data_sha256"]
    # on Gradescope the previous grading is the previous upload's, in the metadata
    meta = _metadata(tmp_path / "m.json", NOW, SAMPLE_TIMES)
    data = json.loads(meta.read_text())
    data["previous_submissions"][-1]["results"]["extra_data"] = {
        "hidden_data_sha256": first["extra_data"]["hidden_data_sha256"]
    }
    meta.write_text(json.dumps(data))
    fresh = _grade(tmp_path, yml, labels, sub, "--metadata", str(meta), results="fresh.json")
    assert "graded with other hidden data" in fresh["output"]


def test_the_version_string_matches_pyproject():
    from autograder.provenance import KIT_VERSION

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'version = "{KIT_VERSION}"' in text
    assert math.isfinite(half_width(0.5, 1))


def test_grade_all_refuses_bad_metadata_in_one_line_before_grading(tmp_path, capsys):
    yml, labels, sub = _setup(tmp_path)
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "ann.json").write_text("[1, 2]")
    code = main(["grade-all", str(tmp_path / "subs"), "--labels", str(labels), "--assignment",
                 str(yml), "--insecure", "--metadata-dir", str(tmp_path / "meta"), "--csv",
                 str(tmp_path / "g.csv")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "ann.json: expected a JSON object" in err
    assert not (tmp_path / "g.csv").exists()
