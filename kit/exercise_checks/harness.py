"""The test loop of the exercises, its messages and its summary line.

- ``@exercise(...)``: declares which exercise a test method checks (number, points, data
  file, tolerances); test_functions.py uses it next to each test, and the autograder reads
  the same declarations (literal values) without importing that file.
- ``check_exercise(test, exercise_id)``: runs the student's code on every stored case of
  ``test_data/<id>.pkl`` and fails ``test`` with a message that helps: the case and its
  input shapes, expected and actual shape and dtype, the largest errors, the known mistake
  the output reproduces or else what is off (``diagnosis``), or the line of
  transformer_utils.py that raised and the probable cause (``crashes``).
- ``summary_line``: "public checks: graded exercises passed n/2, practice passed m/9",
  printed at exit ("public": the grader checks the graded exercises again on hidden cases).
"""

import atexit
import contextlib
import functools
import importlib
import os
import pickle
import traceback
import warnings

import torch

from kit.exercise_checks.compare import (
    explain_difference,
    known_mistake,
    max_error,
    named_outputs,
    tolerance_units,
)
from kit.exercise_checks.crashes import explain_crash
from kit.exercise_checks.diagnosis import diagnose, format_diagnosis
from kit.exercise_checks.forbidden import forbidden_ops
from kit.exercise_checks.runners import RUNNERS

KIT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(KIT_ROOT, "test_data")

# Filled by @exercise: exercise id -> its declaration (number, points, ...).
EXERCISES = {}


def exercise(id, number, points, visibility, name, data, rtol, atol):
    """Declare which exercise a test grades. Use literal values only (read with `ast`)."""

    def declare(test_method):
        EXERCISES[id] = dict(
            id=id,
            number=number,
            points=points,
            visibility=visibility,
            name=name,
            data=data,
            rtol=rtol,
            atol=atol,
        )

        @functools.wraps(test_method)
        def run(self):
            passed = False
            try:
                test_method(self)
                passed = True
            finally:
                _record(id, passed)

        run.exercise = EXERCISES[id]
        return run

    return declare


def _load_pickle(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path, "rb") as f:
        return pickle.load(f)


def load_cases(file_name):
    """(cases, mistakes, grading) of one exercise's test data.

    cases: [{"input": ..., "target": ...}]; mistakes: one dict per case, "description" ->
    output of that known mistake; grading: test_data/<id>_grading.pkl, which holds the
    tolerance of each case ("rtol", "atol", measured on correct implementations) and
    the exercise's role ("graded" or "practice"). {} where that file is missing.
    """
    path = os.path.join(DATA_DIR, file_name)
    cases = _load_pickle(path)
    mistakes = _load_pickle(path.replace(".pkl", "_mistakes.pkl"), [{} for _ in cases])
    grading = _load_pickle(path.replace(".pkl", "_grading.pkl"), {})
    return cases, mistakes, grading


def describe_input(case_input):
    """One line about a case's input, e.g. "x (32, 12, 16), num_heads=4"."""
    parts = []
    for key, value in case_input.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{key} {tuple(value.shape)}")
        elif isinstance(value, (bool, int, float, str, tuple)):
            parts.append(f"{key}={value!r}")
    return ", ".join(parts)


def student_module():
    """Import transformer_utils lazily, so this file can be imported without it."""
    return importlib.import_module("transformer_utils")


STUDENT_FILE = "transformer_utils.py"


def describe_exception(error, student_file=STUDENT_FILE):
    """The exception, then where it happened in YOUR file (not in torch or in these tests).

    For example::

        RuntimeError: mat1 and mat2 shapes cannot be multiplied (80x16 and 64x16)
          at transformer_utils.py:79 in forward:  scores = q @ k.T
    """
    text = f"{type(error).__name__}: {error}".strip()
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if os.path.basename(f.filename) == student_file
    ]
    if not frames:
        return text + f"\n  (not raised inside {student_file}; check what your code returns)"
    lines = [text]
    for f in frames[-3:]:  # the last few calls inside your file, the failing line last
        lines.append(f"  at {student_file}:{f.lineno} in {f.name}:  {(f.line or '').strip()}")
    return "\n".join(lines)


@contextlib.contextmanager
def warnings_at_student_lines(student_file=STUDENT_FILE):
    """Warnings raised while your code runs are shown at YOUR line that caused them.

    Without this, a warning from inside torch (e.g. "The use of `x.T` on tensors of
    dimension other than 2 ... is deprecated") points at these tests' own code.
    """
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        for frame in reversed(traceback.extract_stack()):
            if os.path.basename(frame.filename) == student_file:
                filename, lineno, line = student_file, frame.lineno, frame.line
                break
        original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


class PrecisionNote(UserWarning):
    """Your answer passes, but it lost precision on a hard case (e.g. E[x^2] - mean^2)."""


def _precision_note(info, case_index, case, got, tolerance):
    """A note for a passing answer that needed the looser tolerance of a hard case."""
    strict = tolerance.get("strict_atol")
    if strict is None or tolerance_units(got, case["target"], tolerance["rtol"], strict) <= 1:
        return None
    errors = [
        max_error(g, e)
        for g, e in zip(named_outputs(got).values(), named_outputs(case["target"]).values())
    ]
    return (
        f"{info['name']} (exercise {info['number']}) passes (full marks), but on case "
        f"{case_index + 1} [{describe_input(case['input'])}] it is less precise than the usual "
        f"formulas (max abs error {max(errors):.2g}; they stay within atol {strict:g}). "
        f"This case is hard on purpose. A likely reason: {tolerance['note']}."
    )


# exercise id -> True (passed) / False (failed), filled as the tests run; printed at exit.
OUTCOMES = {}
_SUMMARY_REGISTERED = []


def exercise_roles():
    """exercise id -> "graded" or "practice" (other exercises are given code).

    From ``test_data/roles.yml``, which a course's release writes, else from the kit's
    default assignment when it is here (the instructor's copy), else from the role recorded
    in ``test_data/<id>_grading.pkl``.
    """
    import yaml

    path = os.path.join(DATA_DIR, "roles.yml")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return dict((yaml.safe_load(f) or {}).get("roles") or {})
    kit_root = os.path.dirname(DATA_DIR)
    if os.path.isdir(os.path.join(kit_root, "instructor", "assignments")):
        from autograder.assignment import load_assignment

        default = os.path.join(kit_root, "instructor", "assignments", "cs444_mp3.yml")
        return load_assignment(default).roles(list(EXERCISES))
    roles = {}
    for info in EXERCISES.values():
        path = os.path.join(DATA_DIR, info["data"].replace(".pkl", "_grading.pkl"))
        role = (_load_pickle(path, {}) or {}).get("role")
        if role in ("graded", "practice"):
            roles[info["id"]] = role
    return roles


def summary_line(outcomes=None):
    """'public checks: graded exercises passed n/2, practice passed m/9' (+ how many did not
    run). "Public" because these are the student's cases; the grader runs hidden ones."""
    outcomes = OUTCOMES if outcomes is None else outcomes
    roles = exercise_roles()
    parts, not_run = [], 0
    for role, label in (("graded", "graded exercises"), ("practice", "practice")):
        ids = [i for i in EXERCISES if roles.get(i) == role]
        passed = sum(1 for i in ids if outcomes.get(i) is True)
        not_run += sum(1 for i in ids if i not in outcomes)
        parts.append(f"{label} passed {passed}/{len(ids)}")
    line = "public checks: " + ", ".join(parts)
    return line + (f" ({not_run} not run)" if not_run else "")


def _print_summary():
    if OUTCOMES:
        print(summary_line(), flush=True)


def _record(exercise_id, passed):
    OUTCOMES[exercise_id] = passed
    if not _SUMMARY_REGISTERED:
        # At exit, so that it is the very last line, after unittest's or pytest's own summary.
        atexit.register(_print_summary)
        _SUMMARY_REGISTERED.append(True)


def exercise_order(test_class, test_names):
    """Test method names of ``test_class`` sorted by exercise number (1.1, 1.2, ..., 1.10)."""

    def key(name):
        info = getattr(getattr(test_class, name, None), "exercise", None)
        number = info["number"] if info else "999"
        return tuple(int(p) if p.isdigit() else 999 for p in number.split(".")), name

    return sorted(test_names, key=key)


def check_exercise(test, exercise_id):
    """Run the exercise on every stored case and compare with the reference outputs.

    ``test`` is the running unittest.TestCase: the first problem fails it (``test.fail``)
    with a message naming the case, its input shapes, the error and, when the output
    reproduces one, the known mistake; a passing answer that lost precision on a hard case
    gets a ``PrecisionNote`` warning."""
    info = EXERCISES[exercise_id]
    cases, mistakes, grading = load_cases(info["data"])
    default = {"rtol": info["rtol"], "atol": info["atol"], "strict_atol": None, "note": ""}
    tolerances = grading.get("cases") or [default] * len(cases)
    tu = student_module()
    outputs, first_problem, notes = [None] * len(cases), None, []
    for i, case in enumerate(cases):
        where = (
            f"{info['name']} (exercise {info['number']}), case {i + 1} of {len(cases)} "
            f"[{describe_input(case['input'])}]"
        )
        torch.manual_seed(0)
        not_implemented, crash = None, None
        try:
            with forbidden_ops(exercise_id), warnings_at_student_lines():
                got = RUNNERS[exercise_id](tu, case["input"])
        except NotImplementedError as error:
            not_implemented = str(error)
        except Exception as error:  # your code raised (or torch refused an op): say where
            crash = explain_crash(exercise_id, error, case["input"], case["target"], tu)
        if not_implemented is not None:
            if "not implemented yet" not in not_implemented:
                not_implemented = (
                    f"{info['name']} is not implemented yet (exercise {info['number']}): "
                    f"{not_implemented or 'NotImplementedError'}"
                )
            test.fail(not_implemented)
        if crash is not None:
            test.fail(f"{where}: your code raised an exception:\n{crash}")
        outputs[i] = got
        tol = tolerances[i]
        problem = explain_difference(got, case["target"], tol["rtol"], tol["atol"])
        if problem and first_problem is None:
            first_problem, failing = f"{where}:\n{problem}", i
            if tol.get("note"):
                first_problem += (
                    f"\nThis case is hard on purpose; if your formula is right, a likely "
                    f"reason is {tol['note']}."
                )
        elif not problem:
            note = _precision_note(info, i, case, got, tol)
            if note:
                notes.append(note)
    if first_problem:
        targets = [c["target"] for c in cases]
        pairs = [(t["rtol"], t["atol"]) for t in tolerances]
        mistake = known_mistake(outputs, targets, mistakes, pairs)
        if mistake:
            first_problem += f"\nYour output matches a known mistake: {mistake}"
        else:  # no known cause: at least say which part is off
            inputs = [c["input"] for c in cases]
            lines = diagnose(exercise_id, failing, inputs, outputs, targets, pairs, tu,
                             RUNNERS[exercise_id])  # fmt: skip
            first_problem += format_diagnosis(lines)
        test.fail(first_problem)
    for note in notes:
        warnings.warn(note, PrecisionNote, stacklevel=2)
