"""Solution markers: finding them, stubbing student exercises, stripping internal markers.

The instructor's copy holds each reference solution between two whole comment lines at the
same indentation, ``# BEGIN SOLUTION <exercise_id>`` and ``# END SOLUTION``. For a student
exercise the release replaces the region by a ``YOUR CODE START/END`` block that raises
``NotImplementedError``; for a given one only the two marker lines go. Internal section
markers (``# BEGIN flower section``) and docstring sections titled "... (for instructors)"
never ship.
"""

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MARKER_RE = re.compile(r"#\s*(BEGIN|END)\s+SOLUTION\b(.*)$", re.IGNORECASE)
# Internal section markers of the kit's own development ("# BEGIN flower section"); the
# upper-case SITE markers of the Slurm scripts are documentation for whoever edits them.
COMMENT_MARKER_LINE = re.compile(r"^[ \t]*#[ \t]*(BEGIN|END)[ \t]+[a-z][^\n]*\n", re.MULTILINE)
# A docstring section written for instructors: its title, underline and text, up to the next
# section or the end of the docstring (with the blank line before it).
INSTRUCTOR_DOC_SECTION = re.compile(
    r"\n\n[^\n]*\(for instructors\)\n-+\n.*?(?=\n\n[^\n]+\n-+\n|\n\"\"\"|\Z)", re.DOTALL
)


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


def strip_internal_markers(text):
    """Drop ``# BEGIN/END <lowercase ...>`` comment lines and '(for instructors)' docstring
    sections from a shipped file."""
    return INSTRUCTOR_DOC_SECTION.sub("", COMMENT_MARKER_LINE.sub("", text))
