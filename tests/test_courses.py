"""Every course of instructor/assignments/ releases, explains itself and grades as it asks.

For each course: the release holds its own parts and nothing of another's (files, kit
packages, config sections and presets, README blocks), its README opens with its questions
and lists exactly its uploads, no shipped file names a file the release lacks, and the roles
of its exercises reach the student's tests. The slow tier runs each course's smoke demo in
its release and grades its reference upload (full marks) and its stubs (zero).
"""

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autograder.assignment import ASSIGNMENTS_DIR, load_assignment
from autograder.declarations import read_declarations
from instructor.markers import find_regions
from instructor.parts import load_parts, select
from instructor.release import build_release, preset_names

ROOT = Path(__file__).resolve().parents[1]
COURSES = sorted(p.stem for p in ASSIGNMENTS_DIR.glob("*.yml"))
PARTS = load_parts()
DECLARATIONS = read_declarations(ROOT / "test_functions.py")
# Sentences about the kit's own development, which no student README may hold.
KIT_INTERNAL = ["in the test suite", "have not been run yet", "was lent", "this session"]


def tracked_root_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    names = out.split() or [p.name for p in ROOT.iterdir()]  # a downloaded archive: no git
    return {n for n in names if "/" not in n and n.endswith((".py", ".sbatch", ".sh"))}


@pytest.fixture(scope="module", params=COURSES)
def course(request, tmp_path_factory):
    """(name, assignment, selection, release folder) of one course."""
    name = request.param
    out = tmp_path_factory.mktemp(name) / "student"
    build_release(out, assignment_path=name)
    assignment = load_assignment(name)
    return name, assignment, select(assignment, PARTS), out


def test_courses_are_the_five_of_the_kit():
    assert COURSES == ["cs444_mp3", "cs771_hw2", "iiit_a5", "uva_vit", "xcs231n_a3"]


def test_the_release_holds_its_own_parts_only(course):
    name, assignment, selection, out = course
    top = {p.name for p in out.iterdir()}
    expected = {e for e in selection.entries if (ROOT / e).exists()} | {"test_data"}
    assert top == expected, (name, sorted(top ^ expected))
    others = {f for p in PARTS.parts.values() if p not in selection.picked for f in p.files}
    assert not (others - set(selection.entries)) & top
    kept = [Path(k) for k in selection.kept_kit]
    for path in selection.dropped_kit:
        # only files a picked part lists too (captioning's Fashion-MNIST reader) remain
        found = (out / path).rglob("*") if (out / path).is_dir() else [out / path]
        for left in (f.relative_to(out) for f in found if f.is_file()):
            assert any(left == k or k in left.parents for k in kept), left
    for part in selection.picked:
        for path in part.kit:
            assert (out / path).exists(), path


def test_config_holds_its_sections_and_presets(course):
    name, assignment, selection, out = course
    shipped = yaml.safe_load((out / "config.yml").read_text())
    sections = {k for k in shipped if k != "data_sources"}
    assert sections == set(selection.config_sections), name
    original = yaml.safe_load((ROOT / "config.yml").read_text())
    for section, patterns in assignment.presets.items():
        kept = set(shipped[section])
        wanted = {p for p in original[section] if any(fnmatch.fnmatchcase(p, x) for x in patterns)}
        assert wanted <= kept, sorted(wanted - kept)
        extra = kept - wanted  # only presets that kept ones build on (YAML anchors)
        text = (ROOT / "config.yml").read_text()
        for preset in extra:
            assert re.search(rf"^  {preset}:.*&", text, re.M), f"{preset} ships without a reason"
    assert shipped.get("data_sources", {}) == assignment.data_sources


def readme_upload_list(text):
    section = text.split("**What to upload.**", 1)[1].split("\n\n**", 1)[0]
    return re.findall(r"^- `([^`]+)`", section, flags=re.MULTILINE)


def test_readme_opens_with_the_course_and_lists_its_uploads(course):
    name, assignment, selection, out = course
    text = (out / "README.md").read_text()
    assert text.startswith(f"# {assignment.name}\n")
    assert assignment.intro.strip().splitlines()[0] in text
    graded_files = [
        f
        for f in ("transformer_utils.py",)
        if any(
            r.exercise in assignment.student_exercises
            for r in find_regions((ROOT / f).read_text(), f)
        )
    ]
    expected = (
        graded_files
        + [p.file for p in assignment.predictions]
        + [r.file for r in assignment.required_files]
    )
    assert readme_upload_list(text) == expected
    for where in assignment.data_sources.values():
        assert where in text
    for words in KIT_INTERNAL:
        assert words not in text, words
    quick = next(p for p in selection.picked if p.quick_start)
    assert quick.quick_start in text


def test_no_shipped_file_names_a_file_the_release_lacks(course):
    name, assignment, selection, out = course
    missing = tracked_root_files() - {p.name for p in out.iterdir()}
    hits = []
    for path in sorted(out.rglob("*")):
        if not (path.is_file() and path.suffix in (".py", ".md", ".yml", ".sh", ".sbatch", ".txt")):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for other in missing:
                if re.search(rf"(?<![\w/.-]){re.escape(other)}\b", line):
                    hits.append(f"{path.relative_to(out)}:{number}: {other}")
    assert not hits, "\n".join(hits[:20])


def test_readme_names_only_the_presets_the_course_ships(course):
    """No command, table row or paragraph of the student README names a preset that the
    course's config.yml lacks (the student would run it and get 'unknown preset')."""
    name, assignment, selection, out = course
    text = (out / "README.md").read_text()
    shipped = preset_names((out / "config.yml").read_text())
    unshipped = preset_names((ROOT / "config.yml").read_text()) - shipped
    named = sorted(unshipped.intersection(re.findall(r"[A-Za-z0-9_]+", text)))
    assert not named, f"{name}'s README names presets it does not ship: {named}"
    for command in re.findall(r"--exp_name (\w+)", text):
        assert command in shipped, (name, command)


def test_readme_names_only_the_questions_of_the_course(course):
    """A course without Question 2 never reads 'as in Question 2'."""
    name, assignment, selection, out = course
    text = (out / "README.md").read_text()
    own = {q for part in selection.picked for q in re.findall(r"Question \d", part.title)}
    named = set(re.findall(r"Question \d", text))
    assert named <= own, f"{name}'s README names {sorted(named - own)}; it has {sorted(own)}"
    assert "```bash\n```\n" not in text  # no code block emptied of its commands


def test_roles_reach_the_students_tests(course):
    name, assignment, selection, out = course
    roles = yaml.safe_load((out / "test_data" / "roles.yml").read_text())["roles"]
    assert roles == assignment.roles(DECLARATIONS)
    assert {i for i, r in roles.items() if r == "graded"} == set(assignment.student_exercises)
    shipped = (out / "transformer_utils.py").read_text()
    for exercise in assignment.stubbed_exercises(DECLARATIONS):
        assert f"# ---- YOUR CODE START ({exercise}) ----" in shipped, exercise
    assert not find_regions(shipped, "transformer_utils.py")


def test_gradescope_zip_builds_with_the_course(course, tmp_path):
    """Each course's zip carries its own assignment and the hidden data of its graded
    exercises, and nothing of the others."""
    import zipfile

    from instructor.gradescope import build_zip

    name, assignment, selection, out = course
    labels = tmp_path / "labels"
    labels.mkdir()
    for part in assignment.predictions:
        (labels / part.file).write_text("".join(f"{i % part.num_classes}\n" for i in range(50)))
    names = build_zip(tmp_path / "a.zip", labels, assignment_path=name)
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert (
            zf.read("autograder/assignment.yml") == (ASSIGNMENTS_DIR / f"{name}.yml").read_bytes()
        )
    prepared = {n.split("/")[2] for n in names if n.startswith("autograder/prepared/")}
    assert prepared == set(assignment.student_exercises), name
    assert {n for n in names if n.startswith("labels/")} == {
        f"labels/{p.file}" for p in assignment.predictions
    }


# ---------------------------------------------------------------- slow: run and grade each course


def with_reference_solution(out):
    """The course's release with the reference transformer_utils.py (every exercise written)."""
    shutil.copy(ROOT / "transformer_utils.py", out / "transformer_utils.py")
    for name in ("adversarial.py",):  # the attack exercise ships solved or stubbed
        if (out / name).exists():
            shutil.copy(ROOT / name, out / name)


@pytest.mark.slow
def test_the_smoke_demo_of_each_course_runs_in_its_release(course, tmp_path):
    name, assignment, selection, out = course
    tree = tmp_path / name
    shutil.copytree(out, tree)
    with_reference_solution(tree)
    quick = next(p for p in selection.picked if p.quick_start)
    proc = subprocess.run(
        [sys.executable, *quick.quick_start.split()[1:]],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{name}: {quick.quick_start}\n{proc.stderr[-3000:]}"
    assert "SYNTHETIC" in proc.stdout + proc.stderr  # the default data is labelled


@pytest.mark.slow
def test_reference_upload_gets_full_marks_and_stubs_zero(course, tmp_path):
    from autograder.grade import GradeOptions, grade

    name, assignment, selection, out = course
    labels = tmp_path / "labels"
    labels.mkdir()
    reference, stubs = tmp_path / "reference", tmp_path / "stubs"
    for upload, source in ((reference, ROOT), (stubs, out)):
        upload.mkdir()
        shutil.copy(source / "transformer_utils.py", upload / "transformer_utils.py")
    for part in assignment.predictions:
        truth = "".join(f"{i % part.num_classes}\n" for i in range(50))
        (labels / part.file).write_text(truth)
        (reference / part.file).write_text(truth)
    for req in assignment.required_files:
        (reference / req.file).write_text("made by the test\n")
    opts = GradeOptions(assignment=name, quiet=True)
    full = grade(reference, tmp_path / "reference.json", labels, opts)
    assert full["tests"] and all(t["score"] == t["max_score"] for t in full["tests"]), full
    zero = grade(stubs, tmp_path / "stubs.json", labels, opts)
    exercises = [t for t in zero["tests"] if "exercise" in t["name"].lower() or t["max_score"]]
    graded = [t for t in zero["tests"] if any(d.name in t["name"] for d in DECLARATIONS.values())]
    assert graded and all(t["score"] == 0 for t in graded), zero
    assert all("not implemented yet" in t["output"] for t in graded), zero
    assert exercises


def test_a_course_without_captioning_ships_none_of_question_5(course):
    name, assignment, selection, out = course
    if "caption" in assignment.parts:
        pytest.skip(f"{name} picks captioning")
    for path in ("demo_caption.py", "caption.sbatch", "kit/caption", "kit/report/captions.py"):
        assert not (out / path).exists(), path
    assert "caption" not in yaml.safe_load((out / "config.yml").read_text())
    assert "Question 5" not in (out / "README.md").read_text()
    assert "captions" not in (out / "report.py").read_text()


def test_captioning_alone_ships_what_its_demo_imports(tmp_path):
    """A course may pick captioning without Question 4: the Fashion-MNIST reader and the shape
    drawings it borrows from kit/scratch come along, and nothing else of Question 4."""
    text = (ROOT / "instructor" / "assignments" / "xcs231n_a3.yml").read_text()
    alone = text.replace("parts: [exercises, caption, scratch]", "parts: [exercises, caption]")
    alone = re.sub(r"presets:\n  scratch: [^\n]*\n", "", alone)
    assert alone != text
    (tmp_path / "alone.yml").write_text(alone)
    out = tmp_path / "student"
    build_release(out, assignment_path=tmp_path / "alone.yml")
    assert not (out / "kit" / "scratch" / "recipe.py").exists()
    assert not (out / "demo_scratch.py").exists()
    check = "import demo_caption, report, kit.caption.recipe, kit.caption.synthetic_coco"
    proc = subprocess.run([sys.executable, "-c", check], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
