"""Comparing a student's outputs with the reference outputs, and explaining the difference.

Distances are measured in tolerances: ``|got - expected| / (atol + rtol |expected|)``, at most
1 passes. A known mistake (its output stored next to the case) is named only when the answer
is close to that mistake's output and clearly not the right one, so an almost-right answer
is never told it made a mistake.
"""

import torch


def named_outputs(value):
    """Flatten a tensor / tuple / dict output into a dict name -> value."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return {f"output[{i}]": v for i, v in enumerate(value)}
    return {"output": value}


# A known mistake is named only when your output is close to that mistake's output (within
# MATCH times the tolerance) AND clearly not the right answer (at least FAR times the
# tolerance away): an almost-right answer is never told it made a mistake.
MATCH = 2.0
FAR = 10.0


def tolerance_units(got, expected, rtol, atol):
    """How far got is from expected, in tolerances: max |got - expected| / (atol + rtol |expected|).

    At most 1 means "passes". Outputs may be tensors or dicts/tuples of tensors; a wrong
    structure or shape, or a NaN where expected has none, counts as infinitely far.
    """
    got, expected = named_outputs(got), named_outputs(expected)
    if got.keys() != expected.keys():
        return float("inf")
    worst = 0.0
    for key, exp in expected.items():
        g = got[key]
        if not isinstance(g, torch.Tensor) or g.shape != exp.shape:
            return float("inf")
        if g.numel() == 0:
            continue
        g, exp = g.detach().cpu().double(), exp.double()
        units = (g - exp).abs() / (atol + rtol * exp.abs())
        both_nan = torch.isnan(g) & torch.isnan(exp)
        units = torch.where(both_nan, torch.zeros_like(units), units)
        if torch.isnan(units).any():
            return float("inf")
        worst = max(worst, units.max().item())
    return worst


def known_mistake(outputs, targets, mistakes, tolerances):
    """The known mistake that your outputs reproduce, or None.

    outputs, targets: one entry per case (None for a case that did not run); mistakes: one
    dict per case, "description" -> the output of that mistake (each mistake is stored in
    the case where it shows best); tolerances: (rtol, atol) per case.
    """
    stored = {}
    for i, per_case in enumerate(mistakes):
        for description, wrong in (per_case or {}).items():
            stored.setdefault(description, []).append((i, wrong))
    for description, where in stored.items():
        if any(outputs[i] is None for i, _ in where):
            continue
        close, far = True, False
        for i, wrong in where:
            got, target = named_outputs(outputs[i]), named_outputs(targets[i])
            wrong = named_outputs(wrong)
            if got.keys() != target.keys() or not wrong.keys() <= got.keys():
                close = False
                break
            for key in wrong:  # only the outputs you got wrong (a mistake may leave others right)
                to_target = tolerance_units(got[key], target[key], *tolerances[i])
                if to_target <= 1:
                    continue
                close &= tolerance_units(got[key], wrong[key], *tolerances[i]) <= MATCH
                far |= to_target >= FAR
        if close and far:
            return description
    return None


def max_error(a, b):
    return (a.detach().float() - b.float()).abs().max().item()


def explain_difference(got, expected, rtol, atol, mistakes=None):
    """Return None if got matches expected, else a message that helps find the bug.

    mistakes: optional dict "description of a known mistake" -> the output
    that mistake produces on the same input (see known_mistake).
    """
    got_named, expected_named = named_outputs(got), named_outputs(expected)
    if set(got_named) != set(expected_named):
        return (
            f"expected outputs {sorted(expected_named)}, got {sorted(got_named)} "
            "(check what your code returns)"
        )
    wrong_keys = []
    for key, exp in expected_named.items():
        g = got_named[key]
        label = "output" if key == "output" else f"output '{key}'"
        if not isinstance(g, torch.Tensor):
            return f"{label}: expected a torch.Tensor, got {type(g).__name__}"
        if g.shape != exp.shape:
            return (
                f"{label}: expected shape {tuple(exp.shape)}, got {tuple(g.shape)} "
                "(check your reshapes/transposes and which dim you reduce over)"
            )
        if g.dtype != exp.dtype:
            return (
                f"{label}: expected dtype {exp.dtype}, got {g.dtype} "
                "(keep the dtype of the inputs: no .double(), .half() or numpy round trips)"
            )
        got_named[key] = g.detach().cpu()
        if not torch.allclose(got_named[key], exp, rtol=rtol, atol=atol):
            wrong_keys.append(key)
    if not wrong_keys:
        return None

    key = wrong_keys[0]
    g, exp = got_named[key], expected_named[key]
    label = "output" if key == "output" else f"output '{key}'"
    err = (g - exp).abs()
    rel = err / exp.abs().clamp_min(1e-12)
    bad = ~torch.isclose(g, exp, rtol=rtol, atol=atol)
    message = (
        f"{label} has the expected shape {tuple(exp.shape)} and dtype {exp.dtype} "
        "but wrong values: "
        f"max abs error {err.max().item():.3g} (atol {atol:g}), "
        f"max rel error {rel.max().item():.3g} (rtol {rtol:g}), "
        f"{int(bad.sum())} of {exp.numel()} elements off"
    )
    if torch.isnan(g).any():
        message += "; your output contains NaN"
    if len(wrong_keys) > 1:
        message += f" (also wrong: {', '.join(wrong_keys[1:])})"
    if mistakes:
        mistake = known_mistake([got], [expected], [mistakes], [(rtol, atol)])
        if mistake:
            message += f".\nYour output matches a known mistake: {mistake}"
    return message
