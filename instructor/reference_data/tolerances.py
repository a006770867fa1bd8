"""Per-case tolerances: the exact (float64) targets, the measured error of every correct
answer of the corpus, the tolerances derived from it, and the grading record that stores
them."""

import math
import os
import pickle

import torch

import test_functions  # noqa: F401  (its @exercise declarations fill EXERCISES)
import transformer_utils as tu  # the reference solution
from kit.exercise_checks import runners
from kit.exercise_checks.forbidden import forbidden_ops
from kit.exercise_checks.harness import EXERCISES

from .variants import corpus

# Tolerances. The comparison is |out - target| <= atol + rtol * |target| (torch.isclose). For
# every case the generator measures how far each correct float32 answer of the corpus (and
# the reference solution itself) lands from the exact answer (the reference computed in
# float64, which is also the stored target), and sets
#     atol = max(declared atol, SAFETY_FACTOR x the largest atol any of them needs),
# rounded up to 1, 2 or 5 times a power of ten; rtol stays the declared one. Answers other
# students write can be a few times less precise than the ones measured, so the factor
# is 10; the known mistakes stay at least MISTAKE_MARGIN tolerances away (checks.py).
# Measured with torch 2.14 (python -m instructor.reference_data prints the table; the
# numbers are max abs errors against the exact answer, public / hidden data):
#   1.1 SelfAttention, 10 variants + the reference: within 5.5e-06 / 5.2e-06 on every case
#       (max rel 1.8e-04); with rtol 1e-3 none needs more than the declared atol 1e-05.
#   1.2 LayerNorm, 8 variants + the reference: the stable formulas within 7.7e-07 / 7.4e-07
#       on cases 1, 2, 4, 5 (atol stays 1e-06) and 5.8e-06 / 7.3e-06 on the hard case 3;
#       E[x^2] - mean^2 loses 2.6e-04 / 2.7e-04 there, so case 3 has atol 5e-03 and
#       strict_atol 1e-04 (its note names the cancellation).
# A case where a PRECISION_NOTE variant needs more than the others (their tolerance is kept
# as "strict_atol") passes between the two with that note.
SAFETY_FACTOR = 10.0


def _self_attention64(case_input):
    sd = case_input["weight"]
    model = tu.SelfAttention(
        sd["W_query.weight"].shape[1],
        *(sd[f"W_{n}.weight"].shape[0] for n in ("query", "key", "value")),
    ).double()
    model.load_state_dict({k: v.double() for k, v in sd.items()})
    return model(case_input["x"].double())


def _layer_norm64(case_input):
    norm = tu.LayerNorm(case_input["x"].shape[-1])
    norm.w = torch.nn.Parameter(case_input["w"].double())
    norm.b = torch.nn.Parameter(case_input["b"].double())
    return norm(case_input["x"].double())


# The reference solution in float64: "the exact answer" of an exercise with a corpus.
EXACT = {"self_attention": _self_attention64, "layer_norm": _layer_norm64}


def _exact(exercise_id, case_input):
    with torch.no_grad():
        return EXACT[exercise_id](case_input).detach()


def _exact_target(exercise_id, case_input):
    """The stored target: the float64 answer rounded once to float32."""
    return _exact(exercise_id, case_input).float()


def _round_up(value):
    """Smallest 1, 2 or 5 times a power of ten that is >= value (tolerances stay readable,
    and do not move when a new torch changes the measured errors by a few percent)."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value))
    for mantissa in (1, 2, 5, 10):
        candidate = float(f"{mantissa}e{exponent}")
        if candidate >= value * (1 - 1e-12):
            return candidate
    raise AssertionError(value)


def _significant(value, digits=2):
    return float(f"{value:.{digits - 1}e}")


def measure_spread(exercise_id, cases):
    """Error of every correct float32 answer (corpus + reference) on every case.

    Returns one dict per case: variant name -> {"max_abs", "max_rel", "need"}, where need is
    the atol that answer needs with the declared rtol.
    """
    rtol = EXERCISES[exercise_id]["rtol"]
    answers = [("reference", tu, "")] + [
        (v.name, v.module(), v.precision_note) for v in corpus(exercise_id)
    ]
    spread = [{} for _ in cases]
    for name, module, note in answers:
        for i, case in enumerate(cases):
            torch.manual_seed(0)
            with forbidden_ops(exercise_id):
                out = runners.RUNNERS[exercise_id](module, case["input"])
            exact = _exact(exercise_id, case["input"])
            if out.dtype != torch.float32 or out.shape != exact.shape:
                raise RuntimeError(
                    f"{exercise_id} variant {name}: float32 {tuple(exact.shape)} expected"
                )
            err = (out.double() - exact).abs()
            big = exact.abs() >= 1e-3 * exact.abs().max()  # relative error where it means something
            spread[i][name] = {
                "max_abs": err.max().item(),
                "max_rel": (err[big] / exact.abs()[big]).max().item(),
                "need": (err - rtol * exact.abs()).clamp_min(0).max().item(),
                "note": note,
            }
    return spread


def derive_tolerances(exercise_id, cases):
    """Per-case tolerances (see SAFETY_FACTOR), with the measurement they come from."""
    info = EXERCISES[exercise_id]
    rtol, floor = info["rtol"], info["atol"]
    records = []
    if exercise_id not in EXACT:  # no corpus: the declared tolerance
        return [{"rtol": rtol, "atol": floor, "strict_atol": None, "note": "", "spread": {}}
                for _ in cases]  # fmt: skip
    for per_variant in measure_spread(exercise_id, cases):
        stable = max(m["need"] for m in per_variant.values() if not m["note"])
        strict = max(floor, _round_up(SAFETY_FACTOR * stable))
        imprecise = {n: m for n, m in per_variant.items() if m["note"] and m["need"] > strict}
        atol, strict_atol, note = strict, None, ""
        if imprecise:
            worst = max(m["need"] for m in imprecise.values())
            atol, strict_atol = max(strict, _round_up(SAFETY_FACTOR * worst)), strict
            note = "; ".join(sorted({m["note"] for m in imprecise.values()}))
        records.append(
            {
                "rtol": rtol,
                "atol": atol,
                "strict_atol": strict_atol,
                "note": note,
                "spread": {
                    n: {
                        "max_abs": _significant(m["max_abs"]),
                        "max_rel": _significant(m["max_rel"]),
                    }
                    for n, m in sorted(per_variant.items())
                },
            }
        )
    return records


def grading_record(exercise_id, cases, role, split):
    """``<id>_grading.pkl``: the exercise's role and the tolerance of each case, with the
    measured errors of the correct answers it was derived from (plain Python values)."""
    info = EXERCISES[exercise_id]
    return {
        "exercise": exercise_id,
        "number": info["number"],
        "role": role,
        "split": split,
        "declared": {"rtol": info["rtol"], "atol": info["atol"]},
        "safety_factor": SAFETY_FACTOR,
        "variants": [v.name for v in corpus(exercise_id)],
        "cases": derive_tolerances(exercise_id, cases),
    }


def spread_table(out_dir):
    """The measured spread and the chosen tolerances, one line per case (for the README)."""
    lines = []
    for exercise_id in EXACT:
        path = os.path.join(out_dir, f"{exercise_id}_grading.pkl")
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            grading = pickle.load(f)
        for i, case in enumerate(grading["cases"]):
            worst = max(case["spread"].items(), key=lambda kv: kv[1]["max_abs"])
            stable = [m for n, m in case["spread"].items() if n in _stable_names(exercise_id)]
            lines.append(
                f"{grading['number']:>4} {exercise_id:<15} case {i + 1}: "
                f"stable max abs {max(m['max_abs'] for m in stable):.1e} "
                f"rel {max(m['max_rel'] for m in stable):.1e}; "
                f"worst {worst[0]} abs {worst[1]['max_abs']:.1e} rel {worst[1]['max_rel']:.1e}; "
                f"rtol {case['rtol']:g} atol {case['atol']:g}"
                + (f" (strict atol {case['strict_atol']:g}, with a note)" if case["note"] else "")
            )
    return "\n".join(lines)


def _stable_names(exercise_id):
    return {"reference"} | {v.name for v in corpus(exercise_id) if not v.precision_note}
