"""Writing the reference data: every exercise's cases, known mistakes and grading record,
generated, checked and pickled into test_data/ (public) or autograder/reference_data/
(hidden)."""

import os

import torch

from kit.exercise_checks.harness import KIT_ROOT

from .checks import _check
from .makers import MAKERS
from .makers.practice_mistakes import add_practice_mistakes
from .pickling import _clean, _dumps
from .tolerances import grading_record

ROOT = KIT_ROOT

OUT_DIRS = {
    "public": os.path.join(ROOT, "test_data"),
    "hidden": os.path.join(ROOT, "autograder", "reference_data"),
}
SEEDS = {"public": 1000, "hidden": 2000}


def roles(assignment_path=None):
    """exercise id -> "graded", "practice" or "given", from an assignment (default: the
    default course, instructor/assignments/cs444_mp3.yml). A release writes its own course's
    roles into test_data/roles.yml; this one is recorded in each ``<id>_grading.pkl``."""
    from autograder.assignment import load_assignment

    return load_assignment(assignment_path).roles(list(MAKERS))


def generate(out_dir=None, split="public", exercises=None):
    """Write ``<id>.pkl`` and ``<id>_mistakes.pkl`` of every exercise into out_dir.

    split: "public" (test_data, shipped) or "hidden" (autograder only; other seeds and
    shapes). Returns the list of written paths.
    """
    if split not in SEEDS:
        raise ValueError(f"split={split!r} is unknown; use 'public' or 'hidden'")
    out_dir = OUT_DIRS[split] if out_dir is None else out_dir
    os.makedirs(out_dir, exist_ok=True)
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    # One thread: the same float results whatever the machine's core count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _generate(out_dir, split, exercises)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _generate(out_dir, split, exercises):
    written = []
    role = roles()
    for offset, (exercise_id, make) in enumerate(MAKERS.items()):
        if exercises is not None and exercise_id not in exercises:
            continue
        cases, mistakes = make(SEEDS[split] + 100 * offset, split == "hidden")
        mistakes = add_practice_mistakes(exercise_id, cases, mistakes)
        cases, mistakes = _clean(cases), _clean(mistakes)
        grading = grading_record(exercise_id, cases, role[exercise_id], split)
        mistakes = _check(exercise_id, cases, mistakes, grading)
        for name, obj in (
            (f"{exercise_id}.pkl", cases),
            (f"{exercise_id}_mistakes.pkl", mistakes),
            (f"{exercise_id}_grading.pkl", grading),
        ):
            path = os.path.join(out_dir, name)
            with open(path + ".tmp", "wb") as f:
                f.write(_dumps(obj))
            os.replace(path + ".tmp", path)
            written.append(path)
    return written
