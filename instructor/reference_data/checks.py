"""Checks of generated data: the student runners reproduce every target, and every known
mistake is stored where it is far from the target and from the other mistakes, and is
named by the student tests' own diagnosis."""

import torch

import transformer_utils as tu  # the reference solution
from kit.exercise_checks import compare, runners
from kit.exercise_checks.forbidden import forbidden_ops

MISTAKE_MARGIN = 30.0  # a stored mistake is at least this many tolerances from the target
MISTAKES_DISTINCT = 10.0  # ... and this many from every other mistake stored on that case


def _check(exercise_id, cases, mistakes, grading):
    """The runners must reproduce the targets; every mistake is stored where it shows.

    Each mistake is kept in the first case where it is at least MISTAKE_MARGIN tolerances
    from the target and MISTAKES_DISTINCT tolerances from every other mistake, so that an
    answer that matches it is clearly wrong and cannot be taken for another mistake. Then
    every stored mistake must be named by the student tests' own diagnosis.
    """
    units = compare.tolerance_units
    tolerances = [(g["rtol"], g["atol"]) for g in grading["cases"]]
    for i, case in enumerate(cases):
        torch.manual_seed(0)
        with forbidden_ops(exercise_id):
            got = runners.RUNNERS[exercise_id](tu, case["input"])
        problem = compare.explain_difference(got, case["target"], *tolerances[i])
        if problem:
            raise RuntimeError(
                f"{exercise_id} case {i}: the runner disagrees with the reference: {problem}"
            )
    kept = [{} for _ in cases]
    descriptions = list(dict.fromkeys(d for per_case in mistakes for d in per_case))
    for description in descriptions:
        for i, case in enumerate(cases):
            if description not in mistakes[i]:
                continue
            out = mistakes[i][description]
            others = [o for d, o in mistakes[i].items() if d != description]
            if units(out, case["target"], *tolerances[i]) >= MISTAKE_MARGIN and all(
                units(out, o, *tolerances[i]) >= MISTAKES_DISTINCT for o in others
            ):
                kept[i][description] = out
                break
        else:
            raise RuntimeError(f"{exercise_id}: the mistake {description!r} is never visible")
    targets = [c["target"] for c in cases]
    for description in descriptions:
        outputs = [m.get(description) for m in mistakes]
        named = compare.known_mistake(outputs, targets, kept, tolerances)
        if named != description:
            raise RuntimeError(f"{exercise_id}: {description!r} is diagnosed as {named!r}")
    return kept
