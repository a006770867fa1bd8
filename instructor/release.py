"""``python -m instructor release [--assignment NAME] OUT_DIR``: one course's student starter.

What ships (see instructor/parts.yml and the assignment in instructor/assignments/NAME.yml,
default cs444_mp3): what every release holds (README.md, requirements, config.yml, report.py,
the kit/ package) and the files of the parts the course picks, with the kit packages, config
sections and presets, README blocks and file sections of the other parts left out; the public
``test_data/*.pkl`` of the exercises. Every graded and practice exercise's solution region is
replaced by a stub that raises ``NotImplementedError``; given exercises keep their code (marker
lines removed). Nothing meant for instructors ships: README.md loses its instructor section,
its instructor-only blocks and every marker; Python docstrings lose sections titled "...
(for instructors)"; config.yml and the Python files lose internal ``# BEGIN/END <lowercase>``
marker comments. Generated from the assignment: README.md's opening (the course's questions),
Quick start, upload list, data sources and exercise list, config.yml's ``data_sources:``
(the demos show it when the data is missing) and ``test_data/roles.yml`` (which exercises
are graded, for the tests' summary line). Every tracked top-level entry belongs to a part,
to ``always`` or to ``never``, so a new file can neither leak nor be forgotten. Files are
written in a fixed order with fixed permissions and timestamps: two releases of the same
commit are byte-identical.
"""

import os
import re
import shutil
from pathlib import Path

import yaml

from autograder.assignment import KIT_ROOT, load_assignment
from autograder.declarations import read_declarations
from instructor.markers import ReleaseError, find_regions, strip_internal_markers, stub_source
from instructor.parts import (
    check_listing,
    drop_sections,
    filter_config,
    load_parts,
    select,
    shipped_files,
)
from instructor.readme import render_readme, student_readme

CONFIG_DATA_SOURCES = re.compile(r"^(#[^\n]*\n)*data_sources:\n([ \t]+[^\n]*\n)*", re.MULTILINE)
FIXED_MTIME = 315532800  # 1980-01-01, the earliest time a zip file can hold
ROLES_FILE = "test_data/roles.yml"
COURSE_FILE = "course.yml"
# What the shipped assignment files hold where the course's real download link belongs.
PLACEHOLDER_SOURCE = "the link on your course page"

__all__ = [
    "ReleaseError",
    "build_release",
    "find_regions",
    "placeholder_warnings",
    "upload_list",
]


def upload_list(assignment, selection, declarations, root=KIT_ROOT):
    """``[(file, what it holds)]`` that students upload, in the assignment's order: the file(s)
    holding the graded exercises, the prediction files, then the required files."""
    graded = set(assignment.student_exercises)
    items = []
    for name in shipped_files(root, selection):
        if not name.endswith(".py"):
            continue
        ids = {r.exercise for r in find_regions((Path(root) / name).read_text("utf-8"), name)}
        numbers = sorted(
            (declarations[e].number for e in ids & graded if e in declarations),
            key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")],
        )
        if numbers:
            items.append((name, f"your code; exercises {', '.join(numbers)} are graded"))
    for part in assignment.predictions:
        what = (
            f"the predictions of your best run on the real data ({part.number}; full "
            f"credit at accuracy {float(part.threshold):.2f}"
        )
        if part.public_fraction < 1:
            # Say it up front: a student who sees one score per upload assumes it is the grade.
            what += (
                f"; each upload shows your accuracy on a public {float(part.public_fraction):.0%}"
                " of the test images, the grade comes from the rest, shown when your course staff release it"
            )
        items.append((part.file, what + ")"))
    for req in assignment.required_files:
        items.append((req.file, req.description or f"required ({req.number})"))
    return items


def placeholder_warnings(assignment):
    """One line per data source of ``assignment`` still set to the shipped placeholder: the
    release works, but its students would read "the link on your course page" and find none."""
    return [
        f"warning: data_sources.{name} in {assignment.path} is still the placeholder "
        f"{value!r}; put the real link or path there before you hand the release out"
        for name, value in assignment.data_sources.items()
        if PLACEHOLDER_SOURCE in value
    ]


def preset_names(config_text):
    """Every preset name of a config.yml's sections (``data_sources`` holds none)."""
    config = yaml.safe_load(config_text) or {}
    return {
        name
        for section, presets in config.items()
        if section != "data_sources" and isinstance(presets, dict)
        for name in presets
    }


def render_config(config_text, assignment):
    """config.yml with ``data_sources:`` written from the assignment (comment lines above
    the section replaced too: in the instructor's copy they address the instructor)."""
    if not assignment.data_sources:
        return config_text
    body = yaml.safe_dump({"data_sources": assignment.data_sources}, sort_keys=False, width=1000)
    block = (
        "# Where the real data sets come from (a URL or a path); the demos show it when the\n"
        "# data folder is missing.\n" + body
    )
    pattern = CONFIG_DATA_SOURCES
    if not pattern.search(config_text):
        raise ReleaseError("config.yml has no top-level 'data_sources:' section to fill in")
    return pattern.sub(lambda _: block, config_text, count=1)


def course_file(assignment, upload, declarations):
    """``course.yml``: the course's uploads, for ``python -m kit.upload`` (the student's
    gatherer), in the order of README's upload list."""
    uploads = []
    predictions = {p.file: p for p in assignment.predictions}
    required = {r.file: r for r in assignment.required_files}
    for name, what in upload:
        item = {"file": name, "what": what}
        if name in predictions:
            item.update(kind="predictions", num_classes=predictions[name].num_classes)
        elif name in required:
            script_of = required[name].script_of
            item.update(kind="script", script_of=script_of) if script_of else item.update(
                kind="document"
            )
        else:
            item["kind"] = "code"
        uploads.append(item)
    header = (
        "# This course's uploads, for `python -m kit.upload RUN ... --out upload/` (written by\n"
        "# the release from the course's assignment file; do not edit).\n"
    )
    return header + yaml.safe_dump(
        {"name": assignment.name, "uploads": uploads}, sort_keys=False, width=1000
    )


def course(assignment_path=None, root=KIT_ROOT):
    """``(assignment, selection, declarations, roles)`` of one course."""
    root = Path(root)
    assignment = load_assignment(assignment_path)
    selection = select(assignment, load_parts())
    declarations = read_declarations(root / "test_functions.py")
    unknown = (
        set(assignment.student_exercises)
        | set(assignment.given_exercises)
        | set(
            assignment.practice_exercises if isinstance(assignment.practice_exercises, list) else []
        )
    ) - set(declarations)
    if unknown:
        raise ReleaseError(
            f"{assignment.path}: exercise(s) {', '.join(sorted(unknown))} not declared "
            f"in test_functions.py (known: {', '.join(declarations)})"
        )
    return assignment, selection, declarations, assignment.roles(declarations)


def update_readme(root=KIT_ROOT):
    """Rewrite the repository's README.md generated blocks and course.yml for the default
    course; return whether anything changed (``python -m instructor readme``)."""
    changed = False
    for path, render in (
        (Path(root) / "README.md", instructor_readme),
        (Path(root) / COURSE_FILE, instructor_course),
    ):
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        new = render(old, root)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed = True
    return changed


def instructor_course(_old="", root=KIT_ROOT):
    """The repository's course.yml: the default course's uploads."""
    assignment, selection, declarations, _ = course(None, root)
    return course_file(
        assignment, upload_list(assignment, selection, declarations, root), declarations
    )


def instructor_readme(readme, root=KIT_ROOT):
    """The repository's README.md with its generated blocks written for the default course."""
    assignment, selection, declarations, roles = course(None, root)
    upload = upload_list(assignment, selection, declarations, root)
    quick = next((p for p in selection.picked if p.quick_start), None)
    return render_readme(readme, upload, assignment.data_sources, declarations, roles, quick)


def check_output_folder(out_dir, root, force):
    """Whether ``out_dir`` holds an old tree to replace (``force``); refuses a non-empty folder
    without ``force``, and, even with it, the repository, a folder holding it, or a checkout."""
    if not (out_dir.exists() and any(out_dir.iterdir())):
        return False
    if not force:
        raise ReleaseError(f"{out_dir} exists and is not empty; choose a new folder or use --force")
    here = out_dir.resolve()
    if here == root.resolve() or here in root.resolve().parents or (here / ".git").exists():
        raise ReleaseError(
            f"{out_dir} holds a git checkout or this repository; --force will not delete it"
        )
    return True


def build_release(out_dir, root=KIT_ROOT, assignment_path=None, force=False):
    """Write the student tree of one course into ``out_dir``; return the files written."""
    root = Path(root)
    out_dir = Path(out_dir)
    replace = check_output_folder(out_dir, root, force)  # before any slow work
    assignment, selection, declarations, roles = course(assignment_path, root)
    unlisted = check_listing(root, selection.registry)
    if unlisted:
        raise ReleaseError(
            f"instructor/parts.yml: top-level entries in no part, nor in always or never: "
            f"{', '.join(unlisted)}; add each where it belongs"
        )
    student = set(assignment.stubbed_exercises(declarations))
    upload = upload_list(assignment, selection, declarations, root)
    full_config = (root / "config.yml").read_text("utf-8")
    config = filter_config(full_config, selection, assignment.presets)
    presets = (preset_names(config), preset_names(full_config))
    files = {}  # relative path -> bytes
    found_ids = set()
    for name in shipped_files(root, selection):
        data = (root / name).read_bytes()
        if name.endswith(".py"):
            text = drop_sections(data.decode("utf-8"), selection.dropped_sections(name), name)
            text, ids = stub_source(text, name, student, declarations)
            found_ids |= ids
            data = strip_internal_markers(text).encode("utf-8")
        elif name == "README.md":
            text = student_readme(
                data.decode(), assignment, selection, upload, declarations, roles, presets
            )
            data = text.encode("utf-8")
        elif name == "config.yml":
            data = strip_internal_markers(render_config(config, assignment)).encode("utf-8")
        files[name] = data
    missing = student - found_ids
    if missing:
        raise ReleaseError(
            f"student exercise(s) {', '.join(sorted(missing))} have no solution region in the "
            "shipped files"
        )
    for pkl in sorted((root / "test_data").glob("*.pkl")):
        files[f"test_data/{pkl.name}"] = pkl.read_bytes()
    files[COURSE_FILE] = course_file(assignment, upload, declarations).encode("utf-8")
    files[ROLES_FILE] = yaml.safe_dump(
        {"assignment": assignment.name, "roles": roles}, sort_keys=False
    ).encode("utf-8")
    if replace:
        shutil.rmtree(out_dir)  # only now, once the new tree is built
    out_dir.mkdir(parents=True, exist_ok=True)
    for rel in sorted(files):
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[rel])
        executable = os.access(root / rel, os.X_OK) or rel.endswith((".sh", ".sbatch"))
        os.chmod(target, 0o755 if executable else 0o644)
    for dirpath, _, filenames in os.walk(out_dir):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME))
        os.utime(dirpath, (FIXED_MTIME, FIXED_MTIME))
    return sorted(files)
