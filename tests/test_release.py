"""The student release: what ships, how exercises are stubbed, and that it is reproducible."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.assignment import load_assignment
from instructor.release import (
    ReleaseError,
    build_release,
    check_listing,
    find_regions,
    strip_instructor_text,
    stub_source,
)

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = load_assignment(ROOT / "instructor" / "assignment.yml")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "student"
    build_release(out)
    return out


def _tree(folder):
    """relative path -> (bytes, mode, mtime) for every file under ``folder``."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(folder))] = (path.read_bytes(), st.st_mode, st.st_mtime)
    return out


def test_every_tracked_top_level_entry_is_shipped_or_excluded():
    unlisted = check_listing(ASSIGNMENT, ROOT)
    assert unlisted == [], f"add these to release.files or release.exclude: {unlisted}"


def test_only_listed_files_and_public_data_ship(release):
    top = {p.name for p in release.iterdir()}
    assert top <= set(ASSIGNMENT.release_files) | {"test_data"}
    for name in ("instructor", "autograder", "tests", "benchmarks", ".ci", "pyproject.toml"):
        assert name not in top
    for name in ASSIGNMENT.release_files:
        assert ((ROOT / name).is_file()) == (name in top), name
    shipped = sorted(p.name for p in (release / "test_data").iterdir())
    assert shipped == sorted(p.name for p in (ROOT / "test_data").glob("*.pkl"))
    hidden = {p.read_bytes() for p in (ROOT / "autograder" / "reference_data").glob("*.pkl")}
    assert not any(p.read_bytes() in hidden for p in (release / "test_data").iterdir())


def test_student_exercises_are_stubbed_and_given_ones_kept(release):
    original = (ROOT / "transformer_utils.py").read_text()
    shipped = (release / "transformer_utils.py").read_text()
    assert find_regions(shipped, "transformer_utils.py") == []
    assert "# ---- YOUR CODE START (self_attention) ----" in shipped
    assert "SelfAttention.forward is not implemented yet (exercise 1.1)" in shipped
    assert "LayerNorm.forward is not implemented yet (exercise 1.2)" in shipped
    lines = original.splitlines()
    for region in find_regions(original, "transformer_utils.py"):
        body = [ln for ln in lines[region.begin : region.end - 1] if ln.strip()]
        if region.exercise in ASSIGNMENT.stubbed_exercises:
            assert not any(ln in shipped.splitlines() for ln in body if "return" in ln or "=" in ln)
        else:
            assert all(ln in shipped for ln in body), region.exercise


def test_instructor_readme_section_is_removed(release):
    if (release / "README.md").exists():
        text = (release / "README.md").read_text()
        assert "<!-- BEGIN instructor -->" not in text


def test_student_readme_names_no_folder_students_do_not_get(release):
    """Every command in the student README must work in the student's tree."""
    text = (release / "README.md").read_text()
    excluded = [e for e in ASSIGNMENT.release_exclude if (ROOT / e).is_dir() and e != "test_data"]
    for folder in excluded:
        lines = [line for line in text.splitlines() if f"{folder}/" in line]
        assert not lines, (
            f"the student README mentions {folder}/, which is not shipped: {lines[:3]}; "
            "wrap it in <!-- BEGIN instructor-only --> ... <!-- END instructor-only -->"
        )


def test_instructor_only_blocks_are_removed_from_any_readme_section():
    readme = (
        "<!-- BEGIN flower -->\nTrain it.\n<!-- BEGIN instructor-only -->\n"
        "python benchmarks/bench.py\n<!-- END instructor-only -->\nDone.\n<!-- END flower -->\n"
        "<!-- BEGIN instructor -->\nSecrets.\n<!-- END instructor -->\nEnd.\n"
    )
    assert strip_instructor_text(readme) == (
        "<!-- BEGIN flower -->\nTrain it.\nDone.\n<!-- END flower -->\nEnd.\n"
    )


def test_two_releases_are_byte_identical(tmp_path):
    build_release(tmp_path / "a")
    build_release(tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_release_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ReleaseError, match="not empty"):
        build_release(tmp_path)


def test_force_replaces_an_old_release_but_never_a_checkout(tmp_path, monkeypatch):
    build_release(tmp_path / "old")
    build_release(tmp_path / "old", force=True)  # an earlier release is replaced
    (tmp_path / "clone" / ".git").mkdir(parents=True)

    def refuse(path, *args, **kwargs):  # should the guard break, fail without deleting
        raise AssertionError(f"release --force tried to delete {path}")

    monkeypatch.setattr("instructor.release.shutil.rmtree", refuse)
    for folder in (tmp_path / "clone", ROOT, ROOT.parent):
        with pytest.raises(ReleaseError, match="will not delete"):
            build_release(folder, force=True)
    assert (tmp_path / "clone" / ".git").is_dir() and (ROOT / "transformer_utils.py").is_file()


MALFORMED = {
    "unclosed": ("def f():\n    # BEGIN SOLUTION layer_norm\n    return 1\n", 2, "never closed"),
    "stray_end": ("def f():\n    return 1\n    # END SOLUTION\n", 3, "without a matching"),
    "nested": (
        "def f():\n    # BEGIN SOLUTION layer_norm\n    # BEGIN SOLUTION layer_norm\n"
        "    x = 1\n    # END SOLUTION\n",
        3,
        "cannot nest",
    ),
    "bad_id": (
        "def f():\n    # BEGIN SOLUTION Layer-Norm\n    x = 1\n    # END SOLUTION\n",
        2,
        "lower_snake_case",
    ),
    "no_id": (
        "def f():\n    # BEGIN SOLUTION\n    x = 1\n    # END SOLUTION\n",
        2,
        "lower_snake_case",
    ),
    "indent": (
        "def f():\n    # BEGIN SOLUTION layer_norm\n    x = 1\n  # END SOLUTION\n",
        4,
        "indentation",
    ),
    "inline": ("def f():\n    x = 1  # BEGIN SOLUTION layer_norm\n", 2, "whole comment line"),
    "outside_function": (
        "# BEGIN SOLUTION layer_norm\nX = 1\n# END SOLUTION\n",
        1,
        "inside a function",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_markers_abort_with_file_and_line(name):
    source, line, words = MALFORMED[name]
    with pytest.raises(ReleaseError) as info:
        stub_source(source, "broken.py", {"layer_norm"}, {})
    assert f"broken.py:{line}:" in str(info.value) and words in str(info.value)


def test_markers_in_docstrings_are_not_regions():
    source = 'def f():\n    """Example:\n    # BEGIN SOLUTION <id>\n    """\n    return 1\n'
    assert stub_source(source, "ok.py", {"layer_norm"}, {})[0] == source


def test_given_region_keeps_code_without_markers():
    source = "def f():\n    # BEGIN SOLUTION conv2d\n    return 1\n    # END SOLUTION\n"
    new, ids = stub_source(source, "ok.py", {"layer_norm"}, {})
    assert new == "def f():\n    return 1\n" and ids == {"conv2d"}


@pytest.mark.slow
def test_released_tree_runs_and_stubs_fail_with_not_implemented(release):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [sys.executable, "-m", "unittest", "test_functions", "-v"],
        cwd=release,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for ex in ASSIGNMENT.stubbed_exercises:
        assert f"test_{ex} (test_functions.TestClass.test_{ex}) ... FAIL" in out, out[-3000:]
    assert out.count("not implemented yet") >= len(ASSIGNMENT.stubbed_exercises)
    for demo in sorted(p.stem for p in release.glob("demo_*.py")):
        # one process per demo: each defines its own absl flags
        imp = subprocess.run(
            [sys.executable, "-c", f"import {demo}"],
            cwd=release,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert imp.returncode == 0, f"{demo}: " + imp.stderr[-3000:]
