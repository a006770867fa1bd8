"""Compare the sandbox's outputs with the hidden targets, in the grader's own process.

Nothing here trusts the student: the arrays come from ``np.load(..., allow_pickle=False)``,
so they are plain ndarrays; their type, shape and dtype must match exactly (no
broadcasting), every value must be finite where the target is, and
``|out - target| <= atol + rtol * |target|`` must hold everywhere (NaN fails), with the
tolerance of each case that ``python -m instructor.reference_data`` measured (the declared
one where the data has none). A known mistake is named only when the outputs are close to
that mistake's outputs AND far from the reference (the rule of the student tests).
"""

import numpy as np

EXPECTED_TYPE = "torch.Tensor"
MATCH = 2.0  # close to a mistake: within this many tolerances of its output
FAR = 10.0  # clearly wrong: at least this many tolerances from the reference
REAL_KINDS = "biuf"  # the dtypes whose values are compared as real numbers


def _comparable(out, target):
    """Both real-valued arrays of the same shape (anything else is infinitely far)."""
    return (
        isinstance(out, np.ndarray)
        and isinstance(target, np.ndarray)
        and out.dtype.kind in REAL_KINDS
        and target.dtype.kind in REAL_KINDS
        and out.shape == target.shape
    )


def _describe_key(key):
    """'c0/out' -> 'case 1, output out' (numbered from 1, as in the student tests)."""
    case, _, path = key.partition("/")
    return f"case {int(case[1:]) + 1}" + (f", output {path}" if path else "")


def close(out, target, rtol, atol):
    """Elementwise tolerance check; NaN/inf in ``out`` fail unless equal in ``target``."""
    if not _comparable(out, target) or out.dtype != target.dtype:
        return False
    o = out.astype(np.float64)
    t = target.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(o - t) <= atol + rtol * np.abs(t)
    same_special = (np.isnan(o) & np.isnan(t)) | (np.isinf(o) & (o == t))
    return bool(np.all(ok | same_special))


def _case(key):
    case = key.partition("/")[0]
    return int(case[1:]) if case[1:].isdigit() else 0


def _tolerance(key, rtol, atol, tolerances):
    """(rtol, atol) of the case that ``key`` belongs to."""
    if tolerances:
        i = _case(key)
        if 0 <= i < len(tolerances):
            return tolerances[i]["rtol"], tolerances[i]["atol"]
    return rtol, atol


def check_outputs(outputs, types, targets, rtol, atol, tolerances=None):
    """Return ``(passed, message)`` for one exercise.

    tolerances: optional list, one ``{"rtol", "atol"}`` per case, replacing rtol/atol.
    """
    expected = set(targets)
    got = set(outputs)
    types = types if isinstance(types, dict) else {}  # written by the sandbox: untrusted
    for key in sorted(expected, key=_sort_key):
        where = _describe_key(key)
        kind = types.get(key)
        if key not in got:
            if isinstance(kind, str) and kind:
                return False, f"{where}: expected a torch.Tensor, got an object of type {kind[:80]}"
            return (
                False,
                f"{where}: no output was produced (the returned structure is not the expected one)",
            )
        out, tgt = outputs[key], targets[key]
        if kind != EXPECTED_TYPE:
            return False, f"{where}: expected a plain torch.Tensor, got {str(kind)[:80]}"
        if not isinstance(out, np.ndarray):  # the archive reader gives arrays only
            return False, f"{where}: the output is not an array"
        if out.shape != tgt.shape:
            return False, (
                f"{where}: expected shape {tuple(tgt.shape)}, got {tuple(out.shape)} "
                "(shapes must match exactly; broadcasting is not accepted)"
            )
        if out.dtype != tgt.dtype:
            return False, f"{where}: expected dtype {tgt.dtype}, got {out.dtype}"
        case_rtol, case_atol = _tolerance(key, rtol, atol, tolerances)
        if not close(out, tgt, case_rtol, case_atol):
            summary = _error_summary(out, tgt, case_rtol, case_atol)
            return False, f"{where}: wrong values ({summary})"
    extra = got - expected
    if extra:
        return False, f"returned more outputs than expected ({len(extra)} extra)"
    return True, "all cases match the hidden reference"


def units(out, target, rtol, atol):
    """max |out - target| / (atol + rtol |target|): at most 1 passes; inf when incomparable."""
    if not _comparable(out, target):
        return float("inf")
    if out.size == 0:
        return 0.0
    o = out.astype(np.float64)
    t = target.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        u = np.abs(o - t) / (atol + rtol * np.abs(t))
    u = np.where(np.isnan(o) & np.isnan(t), 0.0, u)
    if np.isnan(u).any():
        return float("inf")
    return float(u.max())


def precision_notes(outputs, targets, tolerances):
    """Notes for outputs that pass only thanks to a hard case's looser tolerance."""
    notes = []
    for i, tol in enumerate(tolerances or []):
        strict = tol.get("strict_atol")
        if strict is None:
            continue
        keys = [k for k in targets if _case(k) == i and k in outputs]
        worst = max((units(outputs[k], targets[k], tol["rtol"], strict) for k in keys), default=0)
        if worst > 1:
            errors = [
                float(np.max(np.abs(outputs[k].astype(np.float64) - targets[k]))) for k in keys
            ]
            notes.append(
                f"Note (full marks): on case {i + 1} your output is less precise than the usual "
                f"formulas (max abs error {max(errors):.2g}; they stay within atol {strict:g}). "
                f"That case is hard on purpose. A likely reason: {tol.get('note', '')}."
            )
    return notes


def grade_outputs(outputs, types, targets, mistakes, rtol, atol, tolerances=None):
    """``(passed, feedback)``: the comparison, then a precision note or a known mistake."""
    passed, message = check_outputs(outputs, types, targets, rtol, atol, tolerances)
    if passed:
        notes = precision_notes(outputs, targets, tolerances)
        return True, "\n".join([message, *notes])
    hint = matching_mistake(outputs, mistakes, rtol, atol, targets, tolerances)
    if hint:
        message += f"\nYour output matches a known mistake: {hint}."
    return False, message


def _error_summary(out, tgt, rtol, atol):
    o = out.astype(np.float64)
    t = tgt.astype(np.float64)
    n_nan = int(np.isnan(o).sum())
    n_inf = int(np.isinf(o).sum())
    if n_nan or n_inf:
        return f"{n_nan} NaN and {n_inf} infinite values in your output"
    diff = np.abs(o - t)
    bad = int((diff > atol + rtol * np.abs(t)).sum())
    rel = diff / np.maximum(np.abs(t), 1e-12)
    return (
        f"{bad} of {t.size} elements outside rtol={rtol:g}, atol={atol:g}; "
        f"max abs error {diff.max():.3g}, max rel error {rel.max():.3g}"
    )


def _sort_key(key):
    case, _, path = key.partition("/")
    return (int(case[1:]) if case[1:].isdigit() else 0, path)


def matching_mistake(outputs, mistakes, rtol, atol, targets=None, tolerances=None):
    """Description of the known mistake that the outputs reproduce, if any.

    A mistake matches when the outputs are within MATCH tolerances of its outputs on every
    case where it is stored and, when the targets are given, at least FAR tolerances from
    the reference on one of them: an almost-right answer is never told it made a mistake.
    """
    for desc, arrays in mistakes.items():
        if not arrays or not all(k in outputs for k in arrays):
            continue
        tol = {k: _tolerance(k, rtol, atol, tolerances) for k in arrays}
        if targets is None:
            wrong = list(arrays)
        else:  # only the outputs that are wrong (a mistake may leave other outputs right)
            wrong = [
                k for k in arrays if k not in targets or units(outputs[k], targets[k], *tol[k]) > 1
            ]
        if not wrong or not all(units(outputs[k], arrays[k], *tol[k]) <= MATCH for k in wrong):
            continue
        if targets is None or any(
            k in targets and units(outputs[k], targets[k], *tol[k]) >= FAR for k in wrong
        ):
            return desc
    return None
