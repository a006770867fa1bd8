"""The student's README.md, written for one course from the repository's README.md.

The repository's README is the instructor's copy: it documents every part of the kit.
Marked blocks (``<!-- BEGIN name -->`` ... ``<!-- END name -->``) tell the release what to
do with each piece:

- ``intro``: replaced by the assignment's ``intro`` (the course's questions);
- ``generated quick-start``: the set-up and first command, for the course's first demo;
- ``generated``: what to upload and where the real data comes from (from the assignment);
- ``generated exercises``: which exercises are graded and how to test them;
- a part's blocks (``flower``, ``scratch``, ...): removed when the course does not pick it;
- ``instructor`` and ``instructor-only``: removed from every student README;
- ``presets: PATTERN ...``: kept when the course ships a preset that matches one of the
  (fnmatch) patterns, removed otherwise: prose about presets another course picked.

A course that keeps only some presets of a config section (``presets:`` in its assignment)
gets no line naming one it does not ship: a table row or a command (with its backslash
continuation lines) that names one is dropped, a code block or table left empty goes too, and
a prose line that names one outside a ``presets`` block stops the release (mark the paragraph).
Then every remaining marker line goes. ``render_readme`` keeps the instructor's copy's
generated blocks up to date for the default course (tests/test_release.py checks it).
"""

import fnmatch
import re
import textwrap

from instructor.markers import ReleaseError

README_BLOCK = re.compile(
    r"<!-- BEGIN (instructor|instructor-only) -->.*?<!-- END \1 -->\n?", re.DOTALL
)
README_MARKER_LINE = re.compile(r"^<!-- (BEGIN|END) [^>]*-->\n", re.MULTILINE)
WIDTH = 92  # README.md's line length
PRESETS_BLOCK = re.compile(r"<!-- BEGIN presets: ([^>]*?) -->\n.*?<!-- END presets: \1 -->\n", re.S)
WORD = re.compile(r"[A-Za-z0-9_]+")
TABLE_RULE = re.compile(r"^\|( *:?-+:? *\|)+ *$")


def block(name):
    """The regular expression of the marked block ``name``, markers included."""
    return re.compile(
        rf"<!-- BEGIN {re.escape(name)} -->\n.*?<!-- END {re.escape(name)} -->\n", re.S
    )


def replace_block(readme, name, body, required=True):
    """``readme`` with the block ``name`` holding ``body`` (markers kept)."""
    pattern = block(name)
    if not pattern.search(readme):
        if not required:
            return readme
        raise ReleaseError(
            f"README.md has no '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' block"
        )
    text = f"<!-- BEGIN {name} -->\n{body}<!-- END {name} -->\n"
    return pattern.sub(lambda _: text, readme, count=1)


def drop_blocks(readme, names):
    """``readme`` without the blocks ``names`` (markers and everything inside them)."""
    for name in names:
        readme = block(name).sub("", readme)
    return readme


def strip_instructor_text(readme):
    """README.md without its instructor section and instructor-only blocks."""
    return README_BLOCK.sub("", readme)


# ---------------------------------------------------------------------- generated blocks


def upload_block(upload, data_sources):
    """What to upload (``upload``: [(file, what it holds)]) and where the data comes from."""
    if upload:
        these = (
            "this file, with this name"
            if len(upload) == 1
            else (f"these {len(upload)} files, with these names")
        )
        lines = [
            f"**What to upload.** Upload exactly {these}:",
            "",
            *[f"- `{name}`: {what}" for name, what in upload],
        ]
    else:
        lines = [
            "**What to upload.** Nothing for the grader: your course staff say how to hand in."
        ]
    if any(name != "transformer_utils.py" and not name.endswith(".pdf") for name, _ in upload):
        lines += [
            "",
            "Gather them rather than copying them by hand: `python -m kit.upload runs/NAME ...",
            "--out upload/` (one run folder per question) copies each run's prediction file,",
            "writes the training script the course asks for, adds your `transformer_utils.py`",
            "and checks the folder as the grader will (names, line counts, classes).",
        ]
    lines += [
        "",
        "Prediction files from a run on synthetic data start with a line saying so; the grader",
        "gives them no credit.",
    ]
    if data_sources:
        lines += [
            "",
            "**Where the real data comes from** (put each data set in the folder that its",
            "question below names, or pass `--data_dir`):",
            "",
        ]
        lines += [f"- {name}: {where}" for name, where in data_sources.items()]
    return "\n".join(lines) + "\n"


def quick_start_block(part):
    """The set-up and first command of README's Quick start, for ``part`` (a Part)."""
    says = (
        "The first line makes a virtual environment in `.venv` and installs the newest versions "
        "that `requirements.txt` allows (in a new shell, `. .venv/bin/activate` again). To "
        "reproduce the environment the course was graded with instead, install the exact "
        "versions of the lock file: `pip install -r requirements-lock.txt`. "
        + " ".join(part.quick_start_says.split())
    )
    return (
        "With Python 3.11 or newer, from the kit's folder:\n\n"
        "```bash\n"
        "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt\n"
        f"{part.quick_start}\n"
        "```\n\n"
        f"{textwrap.fill(says, WIDTH)}\n"
    )


def _number_key(number):
    return [int(p) if p.isdigit() else p for p in number.split(".")]


def exercises_block(declarations, roles):
    """Which exercises are graded, which are practice, and the commands that test them."""
    graded = [d for d in declarations.values() if roles.get(d.id) == "graded"]
    practice = [d for d in declarations.values() if roles.get(d.id) == "practice"]
    graded.sort(key=lambda d: _number_key(d.number))

    def names(items):
        return ", ".join(f"{d.number} (`{d.name}`)" for d in items)

    lines = ["```bash"]
    for d in graded:
        lines.append(f"python -m unittest test_functions.TestClass.{d.test} -v")
    lines += ["python -m unittest test_functions -v          # all of them", "```", ""]
    text = f"Graded: exercises {names(graded)}. " if graded else ""
    if practice:
        text += (
            f"Practice, with the same kind of tests (not graded unless your course staff say "
            f"otherwise): {names(practice)}."
        )
    return "\n".join(lines) + "\n" + textwrap.fill(text, WIDTH) + "\n"


def render_readme(readme, upload, data_sources, declarations, roles, quick_part):
    """README.md with its generated blocks filled in (markers kept): the instructor's copy
    of the default course, and the start of every student README."""
    readme = replace_block(readme, "generated", upload_block(upload, data_sources))
    readme = replace_block(readme, "generated exercises", exercises_block(declarations, roles))
    if quick_part is not None:
        readme = replace_block(readme, "generated quick-start", quick_start_block(quick_part))
    return readme


def _drop_empty_tables(lines):
    """``lines`` without tables that kept their header and rule but lost every row."""
    out = []
    for line in lines:
        out.append(line)
        if len(out) >= 3 and not line.startswith("|"):
            header, rule = out[-3], out[-2]
            if header.startswith("|") and TABLE_RULE.match(rule.rstrip("\n")):
                if len(out) < 4 or not out[-4].startswith("|"):
                    del out[-3:-1]
    return out


def drop_unshipped_presets(readme, shipped, known):
    """``readme`` without what names a preset of ``known`` (every preset of the kit's
    config.yml) that is not in ``shipped`` (the course's config.yml): see the module docstring.
    """
    shipped = set(shipped)

    def keep_block(match):
        patterns = match.group(1).split()
        found = any(fnmatch.fnmatchcase(p, pattern) for p in shipped for pattern in patterns)
        return match.group(0) if found else ""

    readme = PRESETS_BLOCK.sub(keep_block, readme)
    unshipped = set(known) - shipped

    def names(lines):
        return sorted(unshipped.intersection(w for line in lines for w in WORD.findall(line)))

    out, command, fence, kept = [], [], None, 0
    for line in readme.splitlines(keepends=True):
        if line.startswith("```"):
            if fence is None:
                fence, kept = len(out), 0
                out.append(line)
            else:
                if kept == 0:  # every command of the block named an unshipped preset
                    del out[fence:]
                else:
                    out.append(line)
                fence = None
        elif fence is not None:
            command.append(line)
            if line.rstrip("\n").endswith("\\"):
                continue  # the command goes on
            if not names(command):
                out += command
                kept += any(c.strip() for c in command)
            command = []
        elif line.startswith("|"):
            if not names([line]):
                out.append(line)
        elif names([line]) and not README_MARKER_LINE.match(line):  # markers go later
            raise ReleaseError(
                f"README.md: the line {line.strip()[:70]!r} names preset(s) "
                f"{', '.join(names([line]))} that this course does not ship; put its "
                "paragraph in a '<!-- BEGIN presets: NAME ... -->' block"
            )
        else:
            out.append(line)
    return "".join(_drop_empty_tables(out))


def student_readme(readme, assignment, selection, upload, declarations, roles, presets=None):
    """The student's README.md for ``assignment``: the course's questions, generated blocks
    filled in, other courses' parts, instructor text and every marker gone. ``presets``:
    ``(shipped, known)`` preset names, when the course ships only some of them."""
    quick = next((p for p in selection.picked if p.quick_start), None)
    text = render_readme(readme, upload, assignment.data_sources, declarations, roles, quick)
    if assignment.intro:
        text = replace_block(text, "intro", assignment.intro.rstrip("\n") + "\n")
        text = re.sub(r"\A# [^\n]*\n", lambda _: f"# {assignment.name}\n", text, count=1)
    text = drop_blocks(text, selection.dropped_readme_blocks)
    text = strip_instructor_text(text)
    if presets is not None:
        text = drop_unshipped_presets(text, *presets)
    return re.sub(r"\n{3,}", "\n\n", README_MARKER_LINE.sub("", text))
