"""The student release: what ships, how exercises are stubbed, and that it is reproducible.

One release is built per module and inspected by most tests. The slow tier also runs the
released tree's tests and demos in subprocesses; the fast tier runs its stubs in-process.
"""

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

from autograder.assignment import load_assignment
from autograder.declarations import read_declarations
from instructor import release as release_module
from instructor.markers import ReleaseError, find_regions, strip_internal_markers, stub_source
from instructor.parts import check_listing, load_parts, select, shipped_files
from instructor.readme import drop_unshipped_presets, strip_instructor_text, student_readme
from instructor.release import (
    build_release,
    course,
    instructor_course,
    instructor_readme,
    placeholder_warnings,
    render_config,
    upload_list,
)
from kit.config import read_data_sources

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = load_assignment("cs444_mp3")  # the default course
PARTS = load_parts()
SELECTION = select(ASSIGNMENT, PARTS)
DECLARATIONS = read_declarations(ROOT / "test_functions.py")
STUBBED = ASSIGNMENT.stubbed_exercises(DECLARATIONS)


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
    unlisted = check_listing(ROOT, PARTS)
    assert unlisted == [], (
        f"add these to a part, always or never in instructor/parts.yml: {unlisted}"
    )


def test_only_listed_files_and_public_data_ship(release):
    top = {p.name for p in release.iterdir()}
    assert top <= set(SELECTION.entries) | {"test_data"}
    for name in ("instructor", "autograder", "tests", "benchmarks", ".ci", "pyproject.toml"):
        assert name not in top
    for name in SELECTION.entries:
        assert ((ROOT / name).exists()) == (name in top), name
    # A listed folder ships whole (kit/): every file of it but the packages of other parts.
    dropped = [ROOT / d for d in SELECTION.dropped_kit]
    in_kit = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "kit").rglob("*.py")
        if not any(p == d or d in p.parents for d in dropped)
    )
    assert (
        sorted(p.relative_to(release).as_posix() for p in (release / "kit").rglob("*.py")) == in_kit
    )
    assert "kit/scratch/recipe.py" not in in_kit and "kit/flower/recipe.py" in in_kit
    assert not list(release.rglob("__pycache__"))
    shipped = sorted(p.name for p in (release / "test_data").iterdir() if p.suffix == ".pkl")
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
        if region.exercise in STUBBED:
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
    excluded = [e for e in PARTS.never if (ROOT / e).is_dir() and e != "test_data"]
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


@pytest.fixture(scope="module")
def rebuilt(release, tmp_path_factory):
    """A second release, later and elsewhere, written with --force over a copy of the first
    plus a file of its own: (folder, whether that file survived)."""
    old = tmp_path_factory.mktemp("rebuilt") / "old"
    shutil.copytree(release, old)  # an earlier release (same files)
    (old / "leftover.txt").write_text("from an earlier release")
    build_release(old, force=True)  # an earlier release is replaced
    return old, (old / "leftover.txt").exists()


def test_two_releases_are_byte_identical(release, rebuilt):
    assert _tree(release) == _tree(rebuilt[0])


def _ship_one_file(monkeypatch):
    """build_release stubs and renders every shipped file before it looks at the output
    folder; a refusal needs none of that work, so only transformer_utils.py ships."""
    only = ["transformer_utils.py"]
    monkeypatch.setattr(release_module, "shipped_files", lambda root, selection: only)


def test_release_refuses_a_non_empty_folder(tmp_path, monkeypatch):
    _ship_one_file(monkeypatch)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ReleaseError, match="not empty"):
        build_release(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_force_replaces_an_old_release_but_never_a_checkout(rebuilt, tmp_path, monkeypatch):
    folder, leftover_survived = rebuilt  # an earlier release is replaced
    assert folder.is_dir() and not leftover_survived
    _ship_one_file(monkeypatch)
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


def test_released_stubs_fail_with_not_implemented_in_process(release, monkeypatch):
    """In-process form of the test below: the released test_functions.py, run by unittest on
    the released transformer_utils.py, fails every stubbed exercise as not implemented."""
    from kit.exercise_checks import harness

    modules = {}
    for name in ("transformer_utils", "test_functions"):
        spec = importlib.util.spec_from_file_location(name, release / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "transformer_utils", modules["transformer_utils"])
    modules["transformer_utils"].__spec__.loader.exec_module(modules["transformer_utils"])
    monkeypatch.setattr(harness, "OUTCOMES", {})
    monkeypatch.setattr(harness, "EXERCISES", dict(harness.EXERCISES))  # re-declared below
    modules["test_functions"].__spec__.loader.exec_module(modules["test_functions"])
    suite = unittest.defaultTestLoader.loadTestsFromModule(modules["test_functions"])
    stream = io.StringIO()
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    out = stream.getvalue()
    assert not result.wasSuccessful()
    for ex in STUBBED:
        assert f"test_{ex} (test_functions.TestClass.test_{ex}) ... FAIL" in out, out[-3000:]
    assert out.count("not implemented yet") >= len(STUBBED)


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
    for ex in STUBBED:
        assert f"test_{ex} (test_functions.TestClass.test_{ex}) ... FAIL" in out, out[-3000:]
    assert out.count("not implemented yet") >= len(STUBBED)
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


# ---------------------------------------------------------------- nothing for instructors ships

TEXT_SUFFIXES = (".py", ".md", ".yml", ".yaml", ".sh", ".sbatch", ".txt", ".gitignore")
FORBIDDEN = ["BEGIN SOLUTION", "END SOLUTION", "<!--", "BEGIN instructor", "END instructor",
             "for instructors", "owned by the", "instructor/", "instructor-only"]  # fmt: skip


def test_release_strips_every_marker_and_instructor_sentence(release):
    found = []
    for path in sorted(release.rglob("*")):
        if not (path.is_file() and path.name.endswith(TEXT_SUFFIXES)):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{path.relative_to(release)}:{number}: {line.strip()[:80]}"
            found += [where for word in FORBIDDEN if word.lower() in line.lower()]
            if re.match(r"\s*#\s*(BEGIN|END)\s+[a-z]", line):  # internal section markers
                found.append(where)
    assert not found, "\n".join(found)
    # the documented markers of the cluster scripts stay: the README tells users to edit there
    assert "BEGIN SITE SETTINGS" in (release / "cluster_site.sh").read_text()


def test_for_instructors_docstring_sections_and_internal_markers_are_dropped():
    source = (
        '"""Title.\n\nRules\n-----\nKeep me.\n\nMarkers (for instructors)\n'
        "-------------------------\nSecret.\n\nMore\n----\nKeep too.\n"
        '"""\n\n# BEGIN pixmo section\nX = 1\n# END pixmo section\n'
        "# ==== BEGIN SITE SETTINGS ====\n"
    )
    assert strip_internal_markers(source) == (
        '"""Title.\n\nRules\n-----\nKeep me.\n\nMore\n----\nKeep too.\n"""\n\nX = 1\n'
        "# ==== BEGIN SITE SETTINGS ====\n"
    )


def expected_uploads(assignment=ASSIGNMENT):
    """What students upload, straight from the assignment: the shipped file(s) holding a
    graded exercise, then the prediction files, then the required files."""
    graded = [
        name
        for name in shipped_files(ROOT, select(assignment, PARTS))
        if name.endswith(".py")
        and (ROOT / name).is_file()
        and any(
            r.exercise in assignment.student_exercises
            for r in find_regions((ROOT / name).read_text(), name)
        )
    ]
    return (
        graded
        + [p.file for p in assignment.predictions]
        + [r.file for r in assignment.required_files]
    )


def readme_upload_list(text):
    """The file names listed under "What to upload" in a README."""
    section = text.split("**What to upload.**", 1)[1].split("\n\n**", 1)[0]
    return re.findall(r"^- `([^`]+)`", section, flags=re.MULTILINE)


def test_student_readme_lists_exactly_the_files_to_upload(release):
    text = (release / "README.md").read_text()
    assert readme_upload_list(text) == expected_uploads()
    assert expected_uploads()[0] == "transformer_utils.py"  # the brief's order
    for where in ASSIGNMENT.data_sources.values():
        assert where in text


def test_repository_copies_of_generated_text_are_up_to_date():
    """README.md's generated blocks and config.yml's data_sources equal what the release
    writes from the default course, instructor/assignments/cs444_mp3.yml (edit the
    assignment, then run `python -m instructor readme`, and copy data_sources over)."""
    readme = (ROOT / "README.md").read_text()
    assert instructor_readme(readme) == readme, (
        "README.md's generated blocks are out of date: run python -m instructor readme"
    )
    assert instructor_course() == (ROOT / "course.yml").read_text(), (
        "course.yml is out of date: run python -m instructor readme"
    )
    assert read_data_sources(ROOT / "config.yml") == ASSIGNMENT.data_sources, (
        "config.yml's data_sources differ from instructor/assignments/cs444_mp3.yml's"
    )


URL = "https://example.org/course/flowers.tar"


def _custom_assignment(folder):
    """The assignment file with a data URL set and one more required file."""
    text = (ROOT / "instructor" / "assignments" / "cs444_mp3.yml").read_text()
    custom = text.replace('flowers: "the link on your course page"', f'flowers: "{URL}"').replace(
        "required_files:\n", 'required_files:\n  - {file: report.pdf, name: "report"}\n'
    )
    assert custom != text
    (folder / "assignment.yml").write_text(custom)
    return folder / "assignment.yml"


def test_data_sources_set_in_the_assignment_reach_the_students_readme_and_config(tmp_path):
    """In-process form of the test below: what the release writes into README.md and
    config.yml from a changed assignment file (no release, no demo)."""
    assignment, selection, declarations, roles = course(_custom_assignment(tmp_path))
    upload = upload_list(assignment, selection, declarations)
    readme = student_readme(
        (ROOT / "README.md").read_text(), assignment, selection, upload, declarations, roles
    )
    custom_assignment = assignment
    assert readme_upload_list(readme) == expected_uploads(custom_assignment)
    assert "report.pdf" in readme_upload_list(readme) and URL in readme
    (tmp_path / "config.yml").write_text(
        render_config((ROOT / "config.yml").read_text(), custom_assignment)
    )
    assert read_data_sources(tmp_path / "config.yml")["flowers"] == URL


PRESET_README = """\
Intro.

<!-- BEGIN presets: cnn_* -->
A paragraph about `cnn_small`.
<!-- END presets: cnn_* -->
<!-- BEGIN presets: vit_* -->
A paragraph about `vit_big`.
<!-- END presets: vit_* -->

```bash
python demo.py --exp_name cnn_small
python report.py ablation runs/vit_big \\
    --base runs/vit_big
```

```bash
python demo.py --exp_name vit_big
```

| preset | what |
| --- | --- |
| `cnn_small` | kept |
| `vit_big` | dropped |

| preset | what |
| --- | --- |
| `vit_big` | dropped, and its table with it |

The end.
"""


def test_a_course_readme_keeps_only_what_names_its_presets():
    """Blocks kept by their patterns; a command (with its continuation line) and a table row
    that name an unshipped preset are dropped; a code block or table left empty goes too."""
    out = drop_unshipped_presets(PRESET_README, {"cnn_small"}, {"cnn_small", "vit_big"})
    assert "A paragraph about `cnn_small`." in out and "vit_big" not in out, out
    assert out.count("```bash") == 1 and "--exp_name cnn_small" in out
    assert out.count("| preset | what |") == 1 and "| `cnn_small` | kept |" in out
    assert out.rstrip().endswith("The end.")
    everything = drop_unshipped_presets(PRESET_README, {"cnn_small", "vit_big"}, {"vit_big"})
    assert everything == PRESET_README


def test_a_paragraph_naming_an_unshipped_preset_outside_a_block_stops_the_release():
    text = "Intro.\n\nTrain `vit_big` first.\n"
    with pytest.raises(ReleaseError, match="names preset.s. vit_big that this course does not"):
        drop_unshipped_presets(text, {"cnn_small"}, {"cnn_small", "vit_big"})


def test_a_data_source_left_at_the_placeholder_is_a_warning_for_the_instructor(tmp_path):
    """The default course still has the placeholder for both data sets: the release command
    says so (on stderr, after writing the release); set one and only the other is named."""
    default = placeholder_warnings(load_assignment("cs444_mp3"))
    assert [w.split()[1] for w in default] == ["data_sources.flowers", "data_sources.pixmo"]
    assert all("cs444_mp3.yml is still the placeholder" in w for w in default), default
    custom = placeholder_warnings(load_assignment(_custom_assignment(tmp_path)))
    assert [w.split()[1] for w in custom] == ["data_sources.pixmo"], custom
    assert placeholder_warnings(load_assignment("cs771_hw2")) == []  # real sources only
    from instructor.__main__ import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(["release", str(tmp_path / "student")]) == 0
    assert stderr.getvalue().splitlines() == default
    assert (tmp_path / "student" / "README.md").is_file()


@pytest.mark.slow
def test_data_sources_set_in_the_assignment_reach_the_students_demos(tmp_path):
    """The instructor sets a URL in the assignment file; the release writes it into README.md
    and config.yml, and the shipped demos show it when the data is missing."""
    url = URL
    _custom_assignment(tmp_path)
    out = tmp_path / "student"
    build_release(out, assignment_path=tmp_path / "assignment.yml")
    custom_assignment = load_assignment(tmp_path / "assignment.yml")
    readme = (out / "README.md").read_text()
    assert readme_upload_list(readme) == expected_uploads(custom_assignment)
    assert "report.pdf" in readme_upload_list(readme) and url in readme
    assert read_data_sources(out / "config.yml")["flowers"] == url
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [sys.executable, "demo_flower.py", "--data_dir", "flower-dataset-reduced"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert url in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
