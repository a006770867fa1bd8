"""Regenerate the reference data of the exercise bank from the reference solution.

    python -m instructor.reference_data            # writes both sets below
    python -m instructor.reference_data --split public --out_dir /tmp/x

* public: ``test_data/<id>.pkl`` (ships to students), ``<id>_mistakes.pkl`` and
  ``<id>_grading.pkl``
* hidden: ``autograder/reference_data/<id>.pkl`` (+ ``_mistakes.pkl``, ``_grading.pkl``):
  other seeds and shapes, used only by the autograder.

``<id>.pkl`` is a pickled list of cases ``{"input": {...}, "target": ...}`` (float32 CPU
tensors; targets are a tensor or a dict of tensors). ``<id>_mistakes.pkl`` is a list
aligned with the cases, each a dict ``{"description of a known mistake": output}``: the
output that a typical wrong implementation produces on that case, so that the student
tests can name the mistake. The wrong implementations live only here (never shipped).
``<id>_grading.pkl`` is a dict of plain values: the exercise's role in
instructor/assignments/<course>.yml ("graded", "practice" or "given") and, per case, the tolerance
("rtol", "atol", and "strict_atol" + "note" on a deliberately hard case) with the measured
error ("spread") of every correct answer it was derived from (see SAFETY_FACTOR in
tolerances.py).

Everything is seeded and computed with deterministic CPU ops, and pickled with a fixed
protocol and tensors stored by value (see pickling.py), so a rerun with the same torch
writes byte-identical files; another torch may round a last bit differently, so the
kit's test compares regenerated data with the committed data by value. ``generate`` checks
that the student runners of test_functions.py reproduce every target from the reference
solution, and that every stored mistake is far from the target and from the other mistakes
and is named by the student tests' own diagnosis.

The package:

* generation.py: ``generate`` (runs the makers, checks and writes every exercise's three
  files), ``OUT_DIRS``, ``SEEDS``, ``roles``;
* makers/: ``MAKERS``, the case generators and known mistakes, one module per family of
  exercises, and their seeded random inputs (makers/random_inputs.py); more mistakes of
  the practice exercises (makers/practice_mistakes.py), added after the makers ran;
* variants.py: ``corpus``, the correct answers of tests/variants/;
* tolerances.py: exact targets, ``measure_spread``, ``derive_tolerances``, SAFETY_FACTOR,
  ``grading_record`` and ``spread_table``;
* checks.py: the checks of generated data (MISTAKE_MARGIN, MISTAKES_DISTINCT);
* pickling.py: the reproducible pickler;
* __main__.py: the command line.
"""

from .generation import OUT_DIRS, ROOT, SEEDS, generate, roles
from .makers import MAKERS
from .pickling import PICKLE_PROTOCOL
from .tolerances import EXACT, derive_tolerances, grading_record, measure_spread, spread_table
from .variants import VARIANTS_DIR, Variant, corpus

__all__ = [
    "EXACT",
    "MAKERS",
    "OUT_DIRS",
    "PICKLE_PROTOCOL",
    "ROOT",
    "SEEDS",
    "VARIANTS_DIR",
    "Variant",
    "corpus",
    "derive_tolerances",
    "generate",
    "grading_record",
    "measure_spread",
    "roles",
    "spread_table",
]
