"""``python -m instructor release OUT_DIR``: write the student starter from this repository.

What ships: the top-level files and folders listed under ``release.files`` in the assignment
(those that exist; a folder with every file in it, e.g. the ``kit/`` package), with every student and practice exercise's solution region replaced by a stub that
raises ``NotImplementedError``, the regions of "given" exercises kept (marker lines removed), the
instructor-only parts of README.md removed, and the public ``test_data/*.pkl``. Nothing meant
for instructors ships: README.md loses its instructor section, its instructor-only blocks and
every remaining section marker; Python docstrings lose any section titled "... (for
instructors)"; config.yml and the Python files lose internal ``# BEGIN/END <lowercase>``
marker comments (the documented ``SITE`` markers of the Slurm scripts stay). Generated from
the assignment: README.md's upload list and data sources (between ``<!-- BEGIN generated
-->`` and ``<!-- END generated -->``) and config.yml's ``data_sources:``, which the demos
show when the data is missing. Every
tracked top-level entry must be listed in ``release.files`` or ``release.exclude``, so a new
file can neither leak nor be forgotten. Files are written in a fixed order with fixed
permissions and timestamps: two releases of the same commit are byte-identical.
"""

import ast
import io
import os
import re
import shutil
import subprocess
import tokenize
from dataclasses import dataclass
from pathlib import Path

import yaml

from autograder.assignment import KIT_ROOT, load_assignment
from autograder.declarations import read_declarations

FIXED_MTIME = 315532800  # 1980-01-01, the earliest time a zip file can hold
ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MARKER_RE = re.compile(r"#\s*(BEGIN|END)\s+SOLUTION\b(.*)$", re.IGNORECASE)
# README.md: the instructor section, and any line range that other sections mark as
# instructor-only (e.g. benchmark or test commands that refer to folders students never get).
README_BLOCK = re.compile(
    r"<!-- BEGIN (instructor|instructor-only) -->.*?<!-- END \1 -->\n?", re.DOTALL
)
README_GENERATED = re.compile(r"<!-- BEGIN generated -->\n.*?<!-- END generated -->\n", re.DOTALL)
README_MARKER_LINE = re.compile(r"^<!-- (BEGIN|END) [^>]*-->\n", re.MULTILINE)
# Internal section markers of the kit's own development ("# BEGIN flower section"); the
# upper-case SITE markers of the Slurm scripts are documentation for whoever edits them.
COMMENT_MARKER_LINE = re.compile(r"^[ \t]*#[ \t]*(BEGIN|END)[ \t]+[a-z][^\n]*\n", re.MULTILINE)
# A docstring section written for instructors: its title, underline and text, up to the next
# section or the end of the docstring (with the blank line before it).
INSTRUCTOR_DOC_SECTION = re.compile(
    r"\n\n[^\n]*\(for instructors\)\n-+\n.*?(?=\n\n[^\n]+\n-+\n|\n\"\"\"|\Z)", re.DOTALL
)
CONFIG_DATA_SOURCES = re.compile(r"^(#[^\n]*\n)*data_sources:\n([ \t]+[^\n]*\n)*", re.MULTILINE)


class ReleaseError(Exception):
    """The release cannot be built (message names the file and line)."""


@dataclass
class Region:
    exercise: str
    begin: int  # 1-based line of "# BEGIN SOLUTION"
    end: int  # 1-based line of "# END SOLUTION"
    indent: str


def find_regions(source, filename):
    """Parse the solution markers of a Python source; raise ReleaseError on malformed ones.

    Only real comments count (``tokenize``), so marker examples inside docstrings are ignored.
    """
    lines = source.splitlines()
    regions, open_region = [], None
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ReleaseError(f"{filename}: cannot tokenize ({exc})") from None
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        m = MARKER_RE.match(tok.string)
        if not m:
            continue
        row = tok.start[0]
        where = f"{filename}:{row}"
        line = lines[row - 1]
        indent = line[: len(line) - len(line.lstrip())]
        if line.strip() != tok.string.strip():
            raise ReleaseError(f"{where}: solution marker must be a whole comment line")
        kind, rest = m.group(1), m.group(2).strip()
        if kind == "BEGIN":
            if not tok.string.startswith("# BEGIN SOLUTION ") or not ID_RE.match(rest):
                raise ReleaseError(
                    f"{where}: expected '# BEGIN SOLUTION <exercise_id>' with one "
                    f"lower_snake_case id, got {tok.string.strip()!r}"
                )
            if open_region:
                raise ReleaseError(
                    f"{where}: BEGIN SOLUTION inside the region opened at line "
                    f"{open_region.begin} (regions cannot nest; is an END SOLUTION missing?)"
                )
            open_region = Region(rest, row, -1, indent)
        else:
            if tok.string.strip() != "# END SOLUTION":
                raise ReleaseError(
                    f"{where}: expected '# END SOLUTION', got {tok.string.strip()!r}"
                )
            if not open_region:
                raise ReleaseError(f"{where}: END SOLUTION without a matching BEGIN SOLUTION")
            if indent != open_region.indent:
                raise ReleaseError(
                    f"{where}: END SOLUTION is not at the indentation of its BEGIN SOLUTION "
                    f"(line {open_region.begin})"
                )
            open_region.end = row
            regions.append(open_region)
            open_region = None
    if open_region:
        raise ReleaseError(
            f"{filename}:{open_region.begin}: BEGIN SOLUTION {open_region.exercise} is never closed"
        )
    return regions


def _enclosing_function(tree, line):
    """Qualified name (Class.method) of the innermost function containing ``line``."""
    best = None

    def visit(node, prefix):
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                inside = child.lineno < line <= (child.end_lineno or child.lineno)
                if inside and not isinstance(child, ast.ClassDef):
                    best = name
                if inside:
                    visit(child, name + ".")

    visit(tree, "")
    return best


def stub_source(source, filename, student, declarations):
    """Return ``(new_source, ids_found)``: student regions stubbed, given regions unmarked."""
    regions = find_regions(source, filename)
    if not regions:
        return source, set()
    tree = ast.parse(source, filename=filename)
    lines = source.splitlines(keepends=True)
    out, pos = [], 0
    for r in regions:
        out.extend(lines[pos : r.begin - 1])
        body = lines[r.begin : r.end - 1]
        if r.exercise in student:
            func = _enclosing_function(tree, r.begin)
            if func is None:
                raise ReleaseError(
                    f"{filename}:{r.begin}: the solution region of student exercise "
                    f"{r.exercise!r} must be inside a function body"
                )
            decl = declarations.get(r.exercise)
            number = f" (exercise {decl.number})" if decl else ""
            test = decl.test if decl else f"test_{r.exercise}"
            message = (
                f"{func} is not implemented yet{number}: write your code between YOUR CODE "
                f"START and YOUR CODE END in {Path(filename).name}, then run "
                f"python -m unittest test_functions.TestClass.{test} -v"
            )
            out.append(f"{r.indent}# ---- YOUR CODE START ({r.exercise}) ----\n")
            literal = f'"{message}"' if '"' not in message else repr(message)
            out.append(f"{r.indent}raise NotImplementedError({literal})\n")
            out.append(f"{r.indent}# ---- YOUR CODE END ----\n")
        else:
            out.extend(body)
        pos = r.end
    out.extend(lines[pos:])
    new = "".join(out)
    try:
        ast.parse(new, filename=filename)
    except SyntaxError as exc:
        raise ReleaseError(
            f"{filename}:{exc.lineno}: the stubbed file is not valid Python ({exc.msg})"
        ) from None
    if find_regions(new, filename):
        raise ReleaseError(f"{filename}: solution markers left after stubbing")
    return new, {r.exercise for r in regions}


def strip_instructor_text(readme):
    """README.md without its instructor section and instructor-only blocks."""
    return README_BLOCK.sub("", readme)


def upload_list(assignment, root=KIT_ROOT):
    """``[(file, what it holds)]`` that students upload, in the assignment's order: the file(s)
    holding the graded exercises, the prediction files, then the required files."""
    declarations = read_declarations(Path(root) / "test_functions.py")
    graded = set(assignment.student_exercises)
    items = []
    for name in shipped_files(root, assignment.release_files):
        path = Path(root) / name
        if not name.endswith(".py"):
            continue
        ids = {r.exercise for r in find_regions(path.read_text(encoding="utf-8"), name)}
        numbers = sorted(
            (declarations[e].number for e in ids & graded if e in declarations),
            key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")],
        )
        if numbers:
            items.append((name, f"your code; exercises {', '.join(numbers)} are graded"))
    for part in assignment.predictions:
        items.append(
            (
                part.file,
                f"the predictions of your best run on the real data ({part.number}; full "
                f"credit at accuracy {float(part.threshold):.2f})",
            )
        )
    for req in assignment.required_files:
        items.append((req.file, req.description or f"required ({req.number})"))
    return items


def generated_readme_block(assignment, root=KIT_ROOT):
    """The README text generated from the assignment: what to upload, where the data is."""
    files = upload_list(assignment, root)
    lines = [
        f"**What to upload.** Upload exactly these {len(files)} files, with these names:",
        "",
        *[f"- `{name}`: {what}" for name, what in files],
        "",
        "Prediction files from a run on synthetic data start with a line saying so; the grader",
        "gives them no credit.",
    ]
    if assignment.data_sources:
        lines += [
            "",
            "**Where the real data comes from** (put each data set in the folder that its",
            "question below names, or pass `--data_dir`):",
            "",
        ]
        lines += [f"- {name}: {where}" for name, where in assignment.data_sources.items()]
    return "\n".join(lines) + "\n"


def render_readme(readme, assignment, root=KIT_ROOT):
    """README.md with its generated block up to date (markers kept): the instructor's copy."""
    block = f"<!-- BEGIN generated -->\n{generated_readme_block(assignment, root)}<!-- END generated -->\n"
    if not README_GENERATED.search(readme):
        raise ReleaseError(
            "README.md has no '<!-- BEGIN generated -->' ... '<!-- END generated -->' block "
            "for the upload list; add one to the student section"
        )
    return README_GENERATED.sub(lambda _: block, readme, count=1)


def student_readme(readme, assignment, root=KIT_ROOT):
    """The student's README.md: generated block filled in, instructor text and markers gone."""
    text = strip_instructor_text(render_readme(readme, assignment, root))
    return re.sub(r"\n{3,}", "\n\n", README_MARKER_LINE.sub("", text))


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
    if not CONFIG_DATA_SOURCES.search(config_text):
        raise ReleaseError("config.yml has no top-level 'data_sources:' section to fill in")
    return CONFIG_DATA_SOURCES.sub(lambda _: block, config_text, count=1)


def strip_internal_markers(text):
    """Drop ``# BEGIN/END <lowercase ...>`` comment lines and '(for instructors)' docstring
    sections from a shipped file."""
    return INSTRUCTOR_DOC_SECTION.sub("", COMMENT_MARKER_LINE.sub("", text))


def tracked_top_level(root):
    """Top-level entries tracked by git (files and folders), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    names = {p.split("/", 1)[0] for p in out.stdout.decode().split("\0") if p}
    return sorted(names)


def check_listing(assignment, root):
    """Every tracked top-level entry must be shipped or excluded, explicitly."""
    tracked = tracked_top_level(root)
    if tracked is None:
        return []
    listed = set(assignment.release_files) | set(assignment.release_exclude)
    return [name for name in tracked if name not in listed]


def shipped_files(root, entries):
    """The files that ``release.files`` ships, as sorted relative POSIX paths: each listed file
    that exists, and every file inside each listed folder (caches and hidden files left
    out). The same stubbing and stripping applies to each, wherever it lies."""
    root = Path(root)
    names = set()
    for entry in entries:
        path = root / entry
        if path.is_file():
            names.add(entry)
        elif path.is_dir():
            for f in path.rglob("*"):
                rel = f.relative_to(root)
                hidden = any(p.startswith(".") or p == "__pycache__" for p in rel.parts)
                if f.is_file() and not hidden and f.suffix != ".pyc":
                    names.add(rel.as_posix())
    return sorted(names)


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
    """Write the student tree into ``out_dir``; return the list of files written."""
    root = Path(root)
    out_dir = Path(out_dir)
    replace = check_output_folder(out_dir, root, force)  # before any slow work
    assignment = load_assignment(assignment_path or root / "instructor" / "assignment.yml")
    unlisted = check_listing(assignment, root)
    if unlisted:
        raise ReleaseError(
            f"{assignment.path}: top-level entries neither shipped nor excluded: "
            f"{', '.join(unlisted)}; add each to release.files or release.exclude"
        )
    both = set(assignment.release_files) & set(assignment.release_exclude)
    if both:
        raise ReleaseError(
            f"{assignment.path}: listed as shipped AND excluded: {', '.join(sorted(both))}"
        )
    declarations = read_declarations(root / "test_functions.py")
    student = set(assignment.stubbed_exercises)
    unknown = student - set(declarations)
    if unknown:
        raise ReleaseError(
            f"{assignment.path}: exercise(s) {', '.join(sorted(unknown))} not declared "
            f"in test_functions.py (known: {', '.join(declarations)})"
        )
    files = {}  # relative path -> bytes
    found_ids = set()
    for name in shipped_files(root, assignment.release_files):
        data = (root / name).read_bytes()
        if name.endswith(".py"):
            text, ids = stub_source(data.decode("utf-8"), name, student, declarations)
            found_ids |= ids
            data = strip_internal_markers(text).encode("utf-8")
        elif name == "README.md":
            data = student_readme(data.decode("utf-8"), assignment, root).encode("utf-8")
        elif name == "config.yml":
            text = render_config(data.decode("utf-8"), assignment)
            data = strip_internal_markers(text).encode("utf-8")
        files[name] = data
    missing = student - found_ids
    if missing:
        raise ReleaseError(
            f"student exercise(s) {', '.join(sorted(missing))} have no solution region in the "
            "shipped files"
        )
    for pkl in sorted((root / "test_data").glob("*.pkl")):
        files[f"test_data/{pkl.name}"] = pkl.read_bytes()
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
