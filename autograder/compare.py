"""Compare the sandbox's outputs with the hidden targets, in the grader's own process.

Nothing here trusts the student: the arrays come from ``np.load(..., allow_pickle=False)``,
so they are plain ndarrays; their type, shape and dtype must match exactly (no
broadcasting), every value must be finite where the target is, and
``|out - target| <= atol + rtol * |target|`` must hold everywhere (NaN fails).
"""

import numpy as np

EXPECTED_TYPE = "torch.Tensor"


def _describe_key(key):
    """'c0/out' -> 'case 1, output out' (numbered from 1, as in the student tests)."""
    case, _, path = key.partition("/")
    return f"case {int(case[1:]) + 1}" + (f", output {path}" if path else "")


def close(out, target, rtol, atol):
    """Elementwise tolerance check; NaN/inf in ``out`` fail unless equal in ``target``."""
    if out.shape != target.shape or out.dtype != target.dtype:
        return False
    o = out.astype(np.float64)
    t = target.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(o - t) <= atol + rtol * np.abs(t)
    same_special = (np.isnan(o) & np.isnan(t)) | (np.isinf(o) & (o == t))
    return bool(np.all(ok | same_special))


def check_outputs(outputs, types, targets, rtol, atol):
    """Return ``(passed, message)`` for one exercise."""
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
        if out.shape != tgt.shape:
            return False, (
                f"{where}: expected shape {tuple(tgt.shape)}, got {tuple(out.shape)} "
                "(shapes must match exactly; broadcasting is not accepted)"
            )
        if out.dtype != tgt.dtype:
            return False, f"{where}: expected dtype {tgt.dtype}, got {out.dtype}"
        if not close(out, tgt, rtol, atol):
            return False, f"{where}: wrong values ({_error_summary(out, tgt, rtol, atol)})"
    extra = got - expected
    if extra:
        return False, f"returned more outputs than expected ({len(extra)} extra)"
    return True, "all cases match the hidden reference"


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


def matching_mistake(outputs, mistakes, rtol, atol):
    """Description of the known mistake that the outputs reproduce on every case, if any."""
    for desc, arrays in mistakes.items():
        if arrays and all(
            k in outputs and close(outputs[k], v, rtol, atol) for k, v in arrays.items()
        ):
            return desc
    return None
