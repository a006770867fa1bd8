"""The assignment file: which exercises are student work and what each graded part is worth.

The same YAML file drives the student release (``python -m instructor release``) and the
grader. The repository holds one per course in ``instructor/assignments/NAME.yml`` (the
default: ``cs444_mp3``), chosen with ``--assignment NAME`` (or a path); the Gradescope zip
carries the chosen one next to this package as ``autograder/assignment.yml``.
"""

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import yaml

PACKAGE_DIR = Path(__file__).resolve().parent
KIT_ROOT = PACKAGE_DIR.parent  # repository root, or /autograder/source in the zip
ASSIGNMENTS_DIR = KIT_ROOT / "instructor" / "assignments"
DEFAULT_ASSIGNMENT = "cs444_mp3"


# The trusted code that runs the student's exercises inside the sandbox: the exercise-check
# runtime (runners, forbidden ops, stand-ins), shipped in the Gradescope zip at these paths.
SANDBOX_KIT = ("kit/__init__.py", "kit/exercise_checks")


def sandbox_kit_files(root=KIT_ROOT):
    """``{relative path: bytes}`` of the ``SANDBOX_KIT`` files of the kit at ``root``."""
    files = {}
    for rel in SANDBOX_KIT:
        path = Path(root) / rel
        for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            files[f.relative_to(root).as_posix()] = f.read_bytes()
    return files


class AssignmentError(Exception):
    """The assignment file is missing, malformed or inconsistent (one-line message)."""


@dataclass
class PredictionPart:
    """A prediction file graded by accuracy against hidden labels."""

    file: str
    name: str
    number: str
    points: float
    threshold: Fraction  # accuracy for full credit, kept exact
    floor: Fraction  # accuracy at (and below) which credit reaches zero
    num_classes: int
    visibility: str = "visible"
    leaderboard: str = ""
    max_bytes: int = 1_000_000


@dataclass
class RequiredFile:
    """A file that must be present in the upload (checked, never run)."""

    file: str
    name: str
    number: str
    points: float = 0.0
    visibility: str = "visible"
    description: str = ""  # what the file holds, for the student README's upload list
    # the prediction file whose run this script trained (python -m kit.upload builds it)
    script_of: str = ""


@dataclass
class SandboxLimits:
    """Limits of the child process that runs student code."""

    timeout_s: float = 60.0  # wall clock per exercise
    startup_s: float = 90.0  # interpreter + torch import before the first exercise
    cpu_s: int = 60  # CPU seconds per exercise process
    memory_mb: int = 2048  # address space the exercise may add on top of torch's
    max_procs: int = 64  # processes/threads of the sandbox user
    max_file_mb: int = 32  # largest file the child may write
    max_output_kb: int = 16  # captured stdout/stderr kept for the report


@dataclass
class Assignment:
    name: str
    student_exercises: list
    exercise_points: dict
    predictions: list
    required_files: list
    # "rest" (every declared exercise neither graded nor given) or a list of ids
    practice_exercises: list | str = "rest"
    given_exercises: list = field(default_factory=list)  # shipped with their solution
    parts: list = field(default_factory=list)  # instructor/parts.yml's parts that ship
    presets: dict = field(default_factory=dict)  # config.yml section -> preset patterns kept
    intro: str = ""  # the opening of the student README
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    data_sources: dict = field(default_factory=dict)  # data set -> URL or path (student README)
    path: Path = None

    def roles(self, declared):
        """``{exercise id: "graded" | "practice" | "given"}`` for the ``declared`` ids (those
        of test_functions.py), in their order."""
        practice = self.practice_exercises
        roles = {}
        for ex in declared:
            if ex in self.student_exercises:
                roles[ex] = "graded"
            elif ex in self.given_exercises:
                roles[ex] = "given"
            else:
                roles[ex] = "practice" if practice == "rest" or ex in practice else "given"
        return roles

    def stubbed_exercises(self, declared):
        """Every exercise the release replaces by a stub: graded work, then practice."""
        roles = self.roles(declared)
        graded = [ex for ex in self.student_exercises if ex in roles]
        return graded + [ex for ex, role in roles.items() if role == "practice"]


def assignment_path(name_or_path=None):
    """The assignment file for ``--assignment``: a course name of instructor/assignments/
    (``cs444_mp3``) or a path; by default ``autograder/assignment.yml`` in the Gradescope zip,
    else the default course."""
    if name_or_path is None:
        packaged = PACKAGE_DIR / "assignment.yml"
        return packaged if packaged.is_file() else ASSIGNMENTS_DIR / f"{DEFAULT_ASSIGNMENT}.yml"
    value = str(name_or_path)
    if "/" not in value and not value.endswith((".yml", ".yaml")):
        path = ASSIGNMENTS_DIR / f"{value}.yml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in ASSIGNMENTS_DIR.glob("*.yml")))
            raise AssignmentError(
                f"no assignment named {value!r} in {ASSIGNMENTS_DIR}; known: {known or '(none)'}"
                " (or give the path of an assignment file)"
            )
        return path
    return Path(value)


def default_assignment_path():
    """``autograder/assignment.yml`` in the Gradescope zip, else the default course's file."""
    return assignment_path(None)


def _fraction(value, where):
    try:
        frac = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise AssignmentError(f"{where}: {value!r} is not a number") from None
    if not 0 <= frac <= 1:
        raise AssignmentError(f"{where}: {value!r} must lie between 0 and 1")
    return frac


def _known(section, allowed, where):
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise AssignmentError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
        )


def _mapping(item, where):
    if not isinstance(item, dict):
        raise AssignmentError(f"{where}: expected a mapping (key: value lines), got {item!r}")


def _prediction(item, where):
    _mapping(item, where)
    _known(item, set(PredictionPart.__dataclass_fields__), where)
    threshold = _fraction(item["threshold"], where + ".threshold")
    floor = _fraction(item.get("floor", 0), where + ".floor")
    if floor >= threshold:
        raise AssignmentError(f"{where}: floor must be below the threshold")
    return PredictionPart(
        file=item["file"],
        name=item.get("name", item["file"]),
        number=str(item.get("number", "")),
        points=float(item["points"]),
        threshold=threshold,
        floor=floor,
        num_classes=int(item["num_classes"]),
        visibility=item.get("visibility", "visible"),
        leaderboard=item.get("leaderboard", ""),
        max_bytes=int(item.get("max_bytes", 1_000_000)),
    )


def _required_file(item, where):
    item = {"file": item} if isinstance(item, str) else item
    _mapping(item, where)
    _known(item, set(RequiredFile.__dataclass_fields__), where)
    return RequiredFile(
        file=item["file"],
        name=item.get("name", f"{item['file']} present"),
        number=str(item.get("number", "")),
        points=float(item.get("points", 0)),
        visibility=item.get("visibility", "visible"),
        description=str(item.get("description", "")),
        script_of=str(item.get("script_of", "")),
    )


def _parse_list(raw, key, path, parse):
    """Parse ``raw[key]``, a list of mappings; any problem is one line naming the entry."""
    items = raw.get(key) or []
    if not isinstance(items, list):
        raise AssignmentError(f"{path}: {key} must be a list")
    parsed = []
    for i, item in enumerate(items):
        where = f"{path}: {key}[{i}]"
        try:
            parsed.append(parse(item, where))
        except KeyError as exc:
            raise AssignmentError(f"{where}: missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise AssignmentError(f"{where}: {exc}") from None
    return parsed


def _id_list(raw, key, path, allow_rest=False):
    value = raw.get(key)
    if value is None:
        return "rest" if allow_rest else []
    if allow_rest and value == "rest":
        return "rest"
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        rest = " or the word rest" if allow_rest else ""
        raise AssignmentError(f"{path}: {key} must be a list of exercise ids{rest}")
    return list(value)


def load_assignment(path=None):
    """Parse and validate an assignment file (a path, or a course name: ``assignment_path``)."""
    path = assignment_path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AssignmentError(f"{path}: cannot read the assignment ({exc})") from None
    if not isinstance(raw, dict):
        raise AssignmentError(f"{path}: expected a mapping at the top level")
    _known(
        raw,
        {
            "name",
            "student_exercises",
            "practice_exercises",
            "points",
            "given_exercises",
            "predictions",
            "required_files",
            "sandbox",
            "data_sources",
            "parts",
            "presets",
            "intro",
        },
        str(path),
    )
    predictions = _parse_list(raw, "predictions", path, _prediction)
    required = _parse_list(raw, "required_files", path, _required_file)
    sandbox = raw.get("sandbox") or {}
    limits = SandboxLimits()
    _known(sandbox, set(vars(limits)), f"{path}: sandbox")
    for key, value in sandbox.items():
        try:
            setattr(limits, key, type(getattr(limits, key))(value))
        except (TypeError, ValueError):
            raise AssignmentError(f"{path}: sandbox.{key}: {value!r} is not a number") from None
    data_sources = raw.get("data_sources") or {}
    if not isinstance(data_sources, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data_sources.items()
    ):
        raise AssignmentError(f"{path}: data_sources must map each data set name to a text")
    student = _id_list(raw, "student_exercises", path)
    practice = _id_list(raw, "practice_exercises", path, allow_rest=True)
    given = _id_list(raw, "given_exercises", path)
    for a, b in ((student, practice), (student, given), (practice, given)):
        both = set(a) & set(b) if isinstance(a, list) and isinstance(b, list) else set()
        if both:
            raise AssignmentError(
                f"{path}: {', '.join(sorted(both))} listed in two of student_exercises, "
                "practice_exercises and given_exercises; keep each in one list"
            )
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in presets.values()
    ):
        raise AssignmentError(f"{path}: presets must map a config.yml section to preset patterns")
    parts = raw.get("parts") or []
    if not (isinstance(parts, list) and all(isinstance(p, str) for p in parts)):
        raise AssignmentError(f"{path}: parts must be a list of part names (instructor/parts.yml)")
    return Assignment(
        name=raw.get("name", "assignment"),
        student_exercises=student,
        practice_exercises=practice,
        given_exercises=given,
        exercise_points={k: float(v) for k, v in (raw.get("points") or {}).items()},
        predictions=predictions,
        required_files=required,
        parts=list(parts),
        presets=dict(presets),
        intro=str(raw.get("intro") or ""),
        limits=limits,
        data_sources=dict(data_sources),
        path=path,
    )
