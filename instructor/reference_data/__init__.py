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
instructor/assignment.yml ("graded", "practice" or "given") and, per case, the tolerance
("rtol", "atol", and "strict_atol" + "note" on a deliberately hard case) with the measured
error ("spread") of every correct answer it was derived from (see SAFETY_FACTOR below).

Everything is seeded and computed with deterministic CPU ops, and pickled with a fixed
protocol and tensors stored by value (see _ReproduciblePickler), so a rerun with the same
torch writes byte-identical files; another torch may round a last bit differently, so the
kit's test compares regenerated data with the committed data by value. ``generate`` checks
that the student runners of test_functions.py reproduce every target from the reference
solution, and that every stored mistake is far from the target and from the other mistakes
and is named by the student tests' own diagnosis.
"""

import argparse
import ast
import functools
import io
import math
import os
import pickle
import textwrap
import types
from collections import OrderedDict

import numpy
import torch
import torch.nn.functional as F

import test_functions  # noqa: F401  (its @exercise declarations fill EXERCISES)
import transformer_utils as tu  # the reference solution
from kit.exercise_checks import compare, runners
from kit.exercise_checks.forbidden import forbidden_ops
from kit.exercise_checks.harness import EXERCISES, KIT_ROOT

ROOT = KIT_ROOT

PICKLE_PROTOCOL = 4
OUT_DIRS = {
    "public": os.path.join(ROOT, "test_data"),
    "hidden": os.path.join(ROOT, "autograder", "reference_data"),
}
SEEDS = {"public": 1000, "hidden": 2000}


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).contiguous()


def _clean(value):
    """Detached, contiguous, own-storage copies, so pickles are small and reproducible."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().contiguous()
    if isinstance(value, OrderedDict):
        return OrderedDict((k, _clean(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clean(v) for v in value)
    return value


def _random_state(module, gen, scale=0.5):
    """Replace every parameter by a seeded random tensor (norm weights around 1)."""
    state = OrderedDict()
    for name, p in module.state_dict().items():
        if name.endswith(".w") or name == "w" or name.endswith("norm_weight"):
            state[name] = 1.0 + _randn(gen, *p.shape, scale=0.2)
        else:
            state[name] = _randn(gen, *p.shape, scale=scale / math.sqrt(max(p.shape[-1], 1)))
    module.load_state_dict(state)
    return state


def _random_mask(gen, *shape):
    """Bool mask (True = may attend) with at least one True and one False per row."""
    mask = torch.rand(*shape, generator=gen) > 0.5
    cols = shape[-1]
    first = torch.randint(0, cols, shape[:-1], generator=gen)
    mask.scatter_(-1, first[..., None], True)
    second = (first + 1 + torch.randint(0, cols - 1, shape[:-1], generator=gen)) % cols
    mask.scatter_(-1, second[..., None], False)
    return mask


# ---------------------------------------------------------------------------
# Correct answers written other ways, and the tolerances they need
# ---------------------------------------------------------------------------

# tests/variants/<exercise>/*.py: correct student answers, each written the way students
# write them (other products, the scale elsewhere, a hand-written softmax, other variance
# formulas, float64 inside, ...). Each file defines ``forward(self, ...)``; its body is what
# a student writes between YOUR CODE START and YOUR CODE END. A module-level
# ``PRECISION_NOTE = "..."`` marks a formula that is correct but loses precision on hard
# inputs; it is what the student is told when their output shows that loss.
VARIANTS_DIR = os.path.join(ROOT, "tests", "variants")
# The names a variant may import: exactly those transformer_utils.py itself imports.
_ALLOWED_IMPORTS = {
    ("math", None),
    ("torch", None),
    ("torch.nn", "nn"),
    ("torch.nn.functional", "F"),
}

# Tolerances. The comparison is |out - target| <= atol + rtol * |target| (torch.isclose). For
# every case the generator measures how far each correct float32 answer of the corpus (and
# the reference solution itself) lands from the exact answer (the reference computed in
# float64, which is also the stored target), and sets
#     atol = max(declared atol, SAFETY_FACTOR x the largest atol any of them needs),
# rounded up to 1, 2 or 5 times a power of ten; rtol stays the declared one. Answers other
# students write can be a few times less precise than the ones measured, so the factor
# is 10; the known mistakes stay at least MISTAKE_MARGIN tolerances away (checked below).
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
MISTAKE_MARGIN = 30.0  # a stored mistake is at least this many tolerances from the target
MISTAKES_DISTINCT = 10.0  # ... and this many from every other mistake stored on that case


class Variant:
    """One correct answer of the corpus (see VARIANTS_DIR)."""

    def __init__(self, exercise, path):
        self.exercise, self.path = exercise, path
        self.name = os.path.splitext(os.path.basename(path))[0]
        text = open(path, encoding="utf-8").read()
        tree = ast.parse(text, filename=path)
        self.precision_note = ""
        functions = []
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = {(a.name, a.asname) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(f"{node.module}.{a.name}", a.asname) for a in node.names}
            elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "PRECISION_NOTE":
                self.precision_note = ast.literal_eval(node.value)
                continue
            elif isinstance(node, ast.FunctionDef):
                functions.append(node)
                continue
            else:
                continue
            if not names <= _ALLOWED_IMPORTS:
                raise ValueError(f"{path}:{node.lineno}: transformer_utils.py does not import that")
        if [f.name for f in functions] != ["forward"]:
            raise ValueError(f"{path}: define exactly one function, forward(self, ...)")
        body = functions[0].body[1:] if ast.get_docstring(functions[0]) else functions[0].body
        lines = text.splitlines(keepends=True)[body[0].lineno - 1 : functions[0].end_lineno]
        self.body = textwrap.dedent("".join(lines))

    def source(self, reference_source=None):
        """transformer_utils.py with this answer in place of the reference solution."""
        from instructor.release import find_regions

        source = reference_source or open(tu.__file__, encoding="utf-8").read()
        regions = [
            r for r in find_regions(source, "transformer_utils.py") if r.exercise == self.exercise
        ]
        if len(regions) != 1:
            raise ValueError(f"{self.exercise}: a variant replaces exactly one solution region")
        lines = source.splitlines(keepends=True)
        r = regions[0]
        lines[r.begin - 1 : r.end] = [textwrap.indent(self.body, r.indent)]
        return "".join(lines)

    def module(self):
        """The variant's transformer_utils, as a module object (nothing written to disk)."""
        module = types.ModuleType("transformer_utils")
        module.__file__ = self.path
        exec(compile(self.source(), self.path, "exec"), module.__dict__)
        return module


def corpus(exercise_id):
    """The correct answers of one exercise, sorted by name ([] when it has none)."""
    folder = os.path.join(VARIANTS_DIR, exercise_id)
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    return [Variant(exercise_id, os.path.join(folder, n)) for n in names]


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


# ---------------------------------------------------------------------------
# 1.1 SelfAttention
# ---------------------------------------------------------------------------


def _self_attention_variant(
    x,
    sd,
    scale="sqrt",
    softmax_dim=2,
    kq=False,
    softmax=True,
    bias=True,
    scale_after=False,
    whole_batch=False,
    key_weights="W_key",
    transpose_weights=False,
):
    def project(name, inp):
        out = inp @ sd[f"{name}.weight"].t()
        return out + sd[f"{name}.bias"] if bias else out

    B, T, _ = x.shape
    inp = x.reshape(1, B * T, -1) if whole_batch else x
    q, k, v = project("W_query", inp), project(key_weights, inp), project("W_value", inp)
    scores = k @ q.transpose(1, 2) if kq else q @ k.transpose(1, 2)
    dq, dv, din = q.shape[-1], v.shape[-1], x.shape[-1]
    divisor = {
        "sqrt": math.sqrt(dq),
        "none": 1.0,
        "dim": dq,
        "value": math.sqrt(dv),
        "input": math.sqrt(din),
        "multiply": 1 / math.sqrt(dq),
    }[scale]
    if not scale_after:
        scores = scores / divisor
    weights = scores.softmax(dim=softmax_dim) if softmax else scores
    if scale_after:
        weights = weights / divisor
    if transpose_weights:
        weights = weights.transpose(1, 2)
    return (weights @ v).reshape(B, T, -1)


def self_attention_mistakes(x, state):
    """Outputs of the typical wrong SelfAttention implementations on one case."""
    v = functools.partial(_self_attention_variant, x, state)
    return {
        "the scores are not scaled: divide Q K^T by sqrt(query_dim)": v(scale="none"),
        "the scores are divided by query_dim instead of sqrt(query_dim)": v(scale="dim"),
        "the scores are scaled by sqrt(value_dim) instead of sqrt(query_dim)": v(scale="value"),
        "the scores are scaled by sqrt(input_dim) instead of sqrt(query_dim)": v(scale="input"),
        "the scores are multiplied by sqrt(query_dim): divide by it": v(scale="multiply"),
        "the scale is applied after the softmax: divide the scores by sqrt(query_dim) "
        "before the softmax": v(scale_after=True),
        "softmax over the wrong dimension: normalise over the keys (dim 2), not the queries "
        "(dim 1)": v(softmax_dim=1),
        "softmax over the batch (dim 0): normalise each query's scores over the keys (dim 2)": v(
            softmax_dim=0
        ),
        "K Q^T computed instead of Q K^T (the attention matrix is transposed)": v(kq=True),
        "the attention weights are transposed before multiplying by V: use weights @ V": v(
            transpose_weights=True
        ),
        "the softmax is missing": v(softmax=False),
        "the biases of the projections are left out: use self.W_query(x) (weight and bias), "
        "not x @ W^T alone": v(bias=False),
        "the keys are projected with W_query: K = self.W_key(x)": v(key_weights="W_query"),
        "tokens attend across the whole batch (B*T tokens at once): each image's tokens attend "
        "only to the same image, so keep the batch dim in the products (torch.bmm or @ on "
        "(B, T, D))": v(whole_batch=True),
    }


def make_self_attention(seed, hidden):
    B, T, Din, Dq, Dv = (4, 7, 24, 32, 40) if hidden else (8, 10, 16, 64, 96)
    cases, mistakes = [], []
    for i in range(5):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        model = tu.SelfAttention(Din, Dq, Dq, Dv)
        state = _random_state(model, gen, scale=2.0)
        x = _randn(gen, B, T, Din)
        case_input = {"x": x, "weight": state}
        cases.append({"input": case_input, "target": _exact_target("self_attention", case_input)})
        mistakes.append(self_attention_mistakes(x, state))
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.2 LayerNorm
# ---------------------------------------------------------------------------


def _layer_norm_variant(
    x,
    w,
    b,
    eps=1e-5,
    unbiased=False,
    eps_outside=False,
    dims=(-1,),
    affine=True,
    kind="ok",
):
    if kind == "affine_first":
        x, affine = x * w + b, False
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    std = torch.sqrt(var) + eps if eps_outside else torch.sqrt(var + eps)
    if kind == "divide_var":
        std = var + eps
    elif kind == "sqrt_std":
        std = torch.sqrt(torch.sqrt(var) + eps)
    elif kind == "rms":
        mean, std = 0.0, torch.sqrt((x**2).mean(dim=dims, keepdim=True) + eps)
    x_hat = (x if kind == "no_centre" else x - mean) / std
    if kind == "bias_first":
        return (x_hat + b) * w
    return x_hat * w + b if affine else x_hat


def layer_norm_mistakes(x, w, b):
    """Outputs of the typical wrong LayerNorm implementations on one case."""
    v = functools.partial(_layer_norm_variant, x, w, b)
    return {
        "unbiased variance (divides by C - 1): use the biased variance, unbiased=False": v(
            unbiased=True
        ),
        "eps outside the square root: use sqrt(var + eps), not sqrt(var) + eps": v(
            eps_outside=True
        ),
        "eps is missing: use sqrt(var + eps)": v(eps=0.0),
        "wrong normalisation dimension: mean and variance must be over the channels (last "
        "dim), not the tokens (dim 1)": v(dims=(1,)),
        "normalised over all of (T, C): normalise each token separately over its channels": v(
            dims=(1, 2)
        ),
        "statistics over the batch (dim 0), as BatchNorm: take the mean and variance of each "
        "token over its own channels (dim -1)": v(dims=(0,)),
        "per-channel statistics over every token of the batch (dims 0 and 1), as BatchNorm: "
        "take them over the channels of each token (dim -1)": v(dims=(0, 1)),
        "the affine parameters are forgotten: multiply by self.w and add self.b": v(affine=False),
        "w and b are swapped": _layer_norm_variant(x, b, w),
        "divided by the variance: divide by the standard deviation sqrt(var + eps)": v(
            kind="divide_var"
        ),
        "the square root is taken twice (sqrt(std + eps)): divide by sqrt(var + eps)": v(
            kind="sqrt_std"
        ),
        "the mean is not subtracted: normalise x - mean, not x": v(kind="no_centre"),
        "RMSNorm instead of LayerNorm (x / sqrt(mean(x^2) + eps)): subtract the mean and "
        "divide by sqrt(var + eps)": v(kind="rms"),
        "the bias is added before the scale ((x_hat + b) * w): compute x_hat * w + b": v(
            kind="bias_first"
        ),
        "w and b are applied before normalising: normalise first, then x_hat * w + b": v(
            kind="affine_first"
        ),
    }


def make_layer_norm(seed, hidden):
    if hidden:
        shapes = [(16, 9, 24), (4, 20, 24), (16, 5, 48), (8, 11, 24), (6, 7, 40)]
    else:
        shapes = [(32, 12, 16), (8, 18, 16), (32, 6, 32), (16, 10, 16), (8, 12, 32)]
    # Case 3 is hard on purpose: its mean is about 20 times its spread, so a correct
    # E[x^2] - mean^2 loses digits there (and gets full marks with a note). Cases 4 and 5
    # have a tiny variance, where eps matters.
    scales = [1.0, 3.0, 0.5, 1e-3, 2e-3]
    offsets = [0.0, 1.0, -10.0, 0.0, 0.0]
    cases, mistakes = [], []
    for i, (shape, scale, offset) in enumerate(zip(shapes, scales, offsets)):
        gen = _gen(seed + i)
        C = shape[-1]
        x = _randn(gen, *shape, scale=scale) + offset
        w = 1.0 + _randn(gen, C, scale=0.5)
        b = _randn(gen, C, scale=0.5)
        case_input = {"x": x, "w": w, "b": b}
        cases.append({"input": case_input, "target": _exact_target("layer_norm", case_input)})
        mistakes.append(layer_norm_mistakes(x, w, b))
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.3 MultiHeadAttention
# ---------------------------------------------------------------------------


def _mha_variant(
    m,
    query,
    key,
    value,
    mask,
    scale="head",
    softmax_dim=-1,
    invert=False,
    split="ok",
    out_proj=True,
):
    B, T, E = query.shape
    S = key.shape[1]
    H, D = m.num_heads, m.head_dim

    def heads(t, n):
        if split == "no_transpose":
            return t.reshape(B, H, n, D)
        return t.reshape(B, n, H, D).transpose(1, 2)

    q, k, v = heads(m.q_proj(query), T), heads(m.k_proj(key), S), heads(m.v_proj(value), S)
    scores = (
        q @ k.transpose(-2, -1) / {"head": math.sqrt(D), "none": 1.0, "embed": math.sqrt(E)}[scale]
    )
    if mask is not None:
        mask = mask[:, None] if mask.dim() == 3 else mask
        scores = scores.masked_fill(mask if invert else ~mask, float("-inf"))
    attn = scores.softmax(dim=softmax_dim)
    out = attn @ v
    out = out.reshape(B, T, E) if split == "no_transpose" else out.transpose(1, 2).reshape(B, T, E)
    return {"out": m.out_proj(out) if out_proj else out, "attention": attn}


def make_multi_head_attention(seed, hidden):
    # (B, T, S, E, H, mask kind, cross-attention)
    if hidden:
        configs = [
            (2, 6, 6, 24, 3, None, False),
            (3, 5, 5, 24, 4, "2d", False),
            (2, 4, 7, 16, 2, "3d", True),
            (2, 5, 3, 32, 4, None, True),
        ]
    else:
        configs = [
            (2, 5, 5, 16, 2, None, False),
            (2, 6, 6, 32, 4, "2d", False),
            (3, 4, 6, 16, 4, "3d", True),
            (2, 3, 5, 24, 3, None, True),
        ]
    cases, mistakes = [], []
    for i, (B, T, S, E, H, mask_kind, cross) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        m = tu.MultiHeadAttention(E, H).eval()
        state = _random_state(m, gen, scale=2.0)
        query = _randn(gen, B, T, E)
        key = _randn(gen, B, S, E) if cross else query
        value = _randn(gen, B, S, E) if cross else query
        mask = None
        if mask_kind == "2d":
            mask = _random_mask(gen, T, S)
        elif mask_kind == "3d":
            mask = _random_mask(gen, B, T, S)
        with torch.no_grad():
            out, attn = m(query, key, value, mask, return_attention=True)
            wrong = {
                "the scores are not scaled: divide by sqrt(head_dim)": _mha_variant(
                    m, query, key, value, mask, scale="none"
                ),
                "the scores are scaled by sqrt(embed_dim) instead of sqrt(head_dim)": _mha_variant(
                    m, query, key, value, mask, scale="embed"
                ),
                "softmax over the wrong dimension: normalise over the keys (last dim)": _mha_variant(
                    m, query, key, value, mask, softmax_dim=-2
                ),
                "heads split with a plain reshape to (B, H, T, D): reshape to (B, T, H, D), then transpose": _mha_variant(
                    m, query, key, value, mask, split="no_transpose"
                ),
                "the output projection out_proj is not applied": _mha_variant(
                    m, query, key, value, mask, out_proj=False
                ),
            }
            if mask is not None:
                wrong[
                    "inverted mask: True means 'may attend', so block the positions where the mask is False"
                ] = _mha_variant(m, query, key, value, mask, invert=True)
                wrong["the mask is ignored"] = _mha_variant(m, query, key, value, None)
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "state_dict": state,
            "query": query,
            "key": key,
            "value": value,
            "attn_mask": mask,
        }
        cases.append({"input": case_input, "target": {"out": out, "attention": attn}})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.4 Positional encodings
# ---------------------------------------------------------------------------


def _sin1d_variant(kind):
    def encode(N, C):
        pos = torch.arange(N, dtype=torch.float32)[:, None]
        if kind == "cos_own_freq":
            j = torch.arange(C, dtype=torch.float32)
            angles = pos * torch.exp(-math.log(10000.0) * j / C)[None]
            pe = torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles))
            return pe
        inv = torch.exp(-math.log(10000.0) * torch.arange(0, C, 2, dtype=torch.float32) / C)[None]
        angles = pos * inv
        pe = torch.zeros(N, C)
        if kind == "swapped":
            pe[:, 0::2], pe[:, 1::2] = torch.cos(angles), torch.sin(angles)
        elif kind == "halves":
            pe = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        else:
            pe[:, 0::2], pe[:, 1::2] = torch.sin(angles), torch.cos(angles)
        return pe

    return encode


def _positional_outputs(
    case, enc1d=tu.sinusoidal_encoding_1d, swap_2d=False, transpose_learned2d=False
):
    N, C, h, w, x = case["num_positions"], case["dim"], case["height"], case["width"], case["x"]
    row, col = enc1d(h, C // 2), enc1d(w, C // 2)
    if swap_2d:
        row, col = col, row
        grid = torch.cat([row[None, :, :].expand(h, w, -1), col[:, None, :].expand(h, w, -1)], -1)
    else:
        grid = torch.cat([row[:, None, :].expand(h, w, -1), col[None, :, :].expand(h, w, -1)], -1)
    table2d = grid.reshape(h * w, C)
    r, c = case["learned2d"]["row_embedding"], case["learned2d"]["col_embedding"]
    learned = (
        (r[None, :, :] + c[:, None, :]).reshape(h * w, C)
        if transpose_learned2d
        else (r[:, None] + c[None]).reshape(h * w, C)
    )
    return {
        "sinusoidal_encoding_1d": enc1d(N, C),
        "sinusoidal_encoding_2d": table2d,
        "SinusoidalPositionalEncoding1D": x + enc1d(h * w, C)[None],
        "SinusoidalPositionalEncoding2D": x + table2d[None],
        "LearnedPositionalEncoding1D": x + case["learned1d"]["pos_embedding"],
        "LearnedPositionalEncoding2D": x + learned[None],
    }


def make_positional_encoding(seed, hidden):
    configs = [(50, 32, 3, 5), (17, 16, 4, 2)] if hidden else [(40, 16, 2, 3), (64, 32, 4, 4)]
    cases, mistakes = [], []
    for i, (N, C, h, w) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        l1 = tu.LearnedPositionalEncoding1D(h * w, C)
        l2 = tu.LearnedPositionalEncoding2D(h, w, C)
        case = {
            "num_positions": N,
            "dim": C,
            "height": h,
            "width": w,
            "x": _randn(gen, 2, h * w, C),
            "learned1d": _random_state(l1, gen, scale=2.0),
            "learned2d": _random_state(l2, gen, scale=2.0),
        }
        target = runners.run_positional_encoding(tu, case)
        cases.append({"input": case, "target": target})
        mistakes.append(
            {
                "sine and cosine swapped: even columns get sin, odd columns get cos": _positional_outputs(
                    case, _sin1d_variant("swapped")
                ),
                "sines and cosines in two halves: interleave them (column 2i = sin, 2i + 1 = cos)": _positional_outputs(
                    case, _sin1d_variant("halves")
                ),
                "each column has its own frequency: columns 2i and 2i + 1 share the frequency 1 / 10000^(2i / dim)": _positional_outputs(
                    case, _sin1d_variant("cos_own_freq")
                ),
                "2D sinusoidal: the row and column halves are swapped (first half encodes the row)": _positional_outputs(
                    case, swap_2d=True
                ),
                "learned 2D: the grid is flattened column-major; token r * w + c must get row[r] + col[c]": _positional_outputs(
                    case, transpose_learned2d=True
                ),
            }
        )
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.5 Patch embedding
# ---------------------------------------------------------------------------


def _patch_variant(x, p, order):
    B, C, H, W = x.shape
    h, w = H // p, W // p
    if order == "no_permute":
        patches = x.reshape(B, h * w, C, p, p)
    else:
        grid = x.reshape(B, C, h, p, w, p)
        if order == "channels_last":
            patches = (
                grid.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p, p, C).permute(0, 1, 4, 2, 3)
            )
        elif order == "column_major":
            patches = grid.permute(0, 4, 2, 1, 3, 5).reshape(B, h * w, C, p, p)
    return patches


def _patch_outputs(x, p, embed, order):
    patches = _patch_variant(x, p, order)
    if order == "channels_last":
        flat = patches.permute(0, 1, 3, 4, 2).flatten(2)  # vectors ordered (row, col, channel)
    else:
        flat = patches.flatten(2)
    return {
        "img_to_patch": flat,
        "img_to_patch(flatten_channels=False)": patches,
        "PatchEmbedding": embed.proj(flat),
    }


def make_patch_embedding(seed, hidden):
    configs = (
        [(2, 3, 12, 4, 16), (1, 2, 16, 8, 8)] if hidden else [(2, 3, 16, 4, 16), (2, 1, 12, 6, 8)]
    )
    cases, mistakes = [], []
    for i, (B, C, size, p, E) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        embed = tu.PatchEmbedding(size, p, C, E)
        state = _random_state(embed, gen, scale=2.0)
        case = {
            "x": _randn(gen, B, C, size, size),
            "patch_size": p,
            "embed_dim": E,
            "state_dict": state,
        }
        with torch.no_grad():
            target = runners.run_patch_embedding(tu, case)
            wrong = {
                "patch vectors ordered (row, column, channel): flatten each patch in (channel, row, column) order, like a Conv2d weight": _patch_outputs(
                    case["x"], p, embed, "channels_last"
                ),
                "patches listed column by column: list them row by row (left to right, then top to bottom)": _patch_outputs(
                    case["x"], p, embed, "column_major"
                ),
                "reshaped without permuting: pixels of different patches are mixed; view as (B, C, H/p, p, W/p, p) and permute": _patch_outputs(
                    case["x"], p, embed, "no_permute"
                ),
            }
        cases.append({"input": case, "target": target})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.6 / 1.7 Encoder and decoder layers
# ---------------------------------------------------------------------------


def _encoder_variant(layer, x, mask, kind):
    attn_fn = layer.attn
    if kind == "post_ln":
        h, attn = attn_fn(x, x, x, attn_mask=mask, return_attention=True)
        x = layer.norm1(x + h)
        return {"out": layer.norm2(x + layer.mlp(x)), "attention": attn}
    h = layer.norm1(x)
    h2, attn = attn_fn(
        h, h, h, attn_mask=None if kind == "no_mask" else mask, return_attention=True
    )
    if kind == "no_residual":
        y = h2
        return {"out": layer.mlp(layer.norm2(y)), "attention": attn}
    if kind == "residual_of_norm":
        y = h + h2
        return {"out": layer.norm2(y) + layer.mlp(layer.norm2(y)), "attention": attn}
    y = x + h2
    norm2 = layer.norm1 if kind == "norm1_twice" else layer.norm2
    return {"out": y + layer.mlp(norm2(y)), "attention": attn}


def _layer_config(hidden, i):
    return (
        [(2, 6, 16, 2, 2.0), (3, 5, 24, 3, 1.5)][i]
        if hidden
        else [(2, 5, 16, 2, 2.0), (2, 7, 32, 4, 1.0)][i]
    )


def make_encoder_layer(seed, hidden):
    cases, mistakes = [], []
    for i in range(2):
        B, T, E, H, ratio = _layer_config(hidden, i)
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        layer = tu.TransformerEncoderLayer(E, H, ratio).eval()
        state = _random_state(layer, gen, scale=1.5)
        x = _randn(gen, B, T, E)
        mask = _random_mask(gen, T, T) if i == 1 else None
        with torch.no_grad():
            out, attn = layer(x, attn_mask=mask, return_attention=True)
            wrong = {
                "post-LN: normalise the input of each sub-layer (pre-LN), not the sum after the residual": _encoder_variant(
                    layer, x, mask, "post_ln"
                ),
                "the residual connections are missing: add the sub-layer output to its input": _encoder_variant(
                    layer, x, mask, "no_residual"
                ),
                "the residual adds LN(x): add the sub-layer output to the un-normalised x": _encoder_variant(
                    layer, x, mask, "residual_of_norm"
                ),
                "norm1 used before the MLP too: each sub-layer has its own LayerNorm (norm2 before the MLP)": _encoder_variant(
                    layer, x, mask, "norm1_twice"
                ),
            }
            if mask is not None:
                wrong["the attention mask is not passed to self.attn"] = _encoder_variant(
                    layer, x, mask, "no_mask"
                )
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "mlp_ratio": ratio,
            "state_dict": state,
            "x": x,
            "attn_mask": mask,
        }
        cases.append({"input": case_input, "target": {"out": out, "attention": attn}})
        mistakes.append(wrong)
    return cases, mistakes


def _decoder_variant(layer, x, memory, self_mask, memory_mask, kind):
    h = layer.norm1(x)
    if kind == "post_ln":
        x = layer.norm1(x + layer.self_attn(x, x, x, attn_mask=self_mask))
        x = layer.norm2(x + layer.cross_attn(x, memory, memory, attn_mask=memory_mask))
        return layer.norm3(x + layer.mlp(x))
    sa = layer.self_attn(h, h, h, attn_mask=None if kind == "no_causal" else self_mask)
    x = sa if kind == "no_residual" else x + sa
    h = layer.norm2(x)
    if kind == "memory_normalised":
        m = layer.norm2(memory)
        ca = layer.cross_attn(h, m, m, attn_mask=memory_mask)
    elif kind == "swapped_roles":
        ca = layer.cross_attn(h, h, h, attn_mask=None)
    else:
        ca = layer.cross_attn(h, memory, memory, attn_mask=memory_mask)
    x = ca if kind == "no_residual" else x + ca
    y = layer.mlp(layer.norm3(x))
    return y if kind == "no_residual" else x + y


def make_decoder_layer(seed, hidden):
    cases, mistakes = [], []
    for i in range(2):
        B, T, E, H, ratio = _layer_config(hidden, i)
        S = T + 2
        gen = _gen(seed + 10 + i)
        torch.manual_seed(seed + 10 + i)
        layer = tu.TransformerDecoderLayer(E, H, ratio).eval()
        state = _random_state(layer, gen, scale=1.5)
        x = _randn(gen, B, T, E)
        memory = _randn(gen, B, S, E, scale=2.0) + 0.5
        self_mask = tu.causal_mask(T)
        memory_mask = _random_mask(gen, B, T, S) if i == 1 else None
        args = (layer, x, memory, self_mask, memory_mask)
        with torch.no_grad():
            target = layer(x, memory, self_mask, memory_mask)
            wrong = {
                "the causal mask is not used in self-attention: pass self_attn_mask to self.self_attn": _decoder_variant(
                    *args, "no_causal"
                ),
                "post-LN: normalise the input of each sub-layer (pre-LN), not the sum after the residual": _decoder_variant(
                    *args, "post_ln"
                ),
                "the residual connections are missing": _decoder_variant(*args, "no_residual"),
                "memory normalised with norm2: only the queries (from x) are normalised before cross-attention": _decoder_variant(
                    *args, "memory_normalised"
                ),
                "cross-attention reads x instead of memory: keys and values come from memory": _decoder_variant(
                    *args, "swapped_roles"
                ),
            }
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "mlp_ratio": ratio,
            "state_dict": state,
            "x": x,
            "memory": memory,
            "self_attn_mask": self_mask,
            "memory_mask": memory_mask,
        }
        cases.append({"input": case_input, "target": target})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.8 DifferentialAttention
# ---------------------------------------------------------------------------


def _diff_variant(m, x, mask, kind, layer_idx):
    B, T, E = x.shape
    H, D = m.num_heads, m.head_dim
    lambda_init = m.lambda_init
    if kind == "off_by_one":
        lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
    q = m.q_proj(x).view(B, T, 2 * H, D).transpose(1, 2)
    k = m.k_proj(x).view(B, T, 2 * H, D).transpose(1, 2)
    v = m.v_proj(x).view(B, T, H, 2 * D).transpose(1, 2)
    scale = math.sqrt(2 * D) if kind == "scale_2d" else math.sqrt(D)
    scores = q @ k.transpose(-2, -1) / scale
    if mask is not None:
        scores = scores.masked_fill(~(mask[:, None] if mask.dim() == 3 else mask), float("-inf"))
    maps = scores.softmax(-1).view(B, H, 2, T, T)
    lam = torch.exp(m.lambda_q1 @ m.lambda_k1) - torch.exp(m.lambda_q2 @ m.lambda_k2)
    if kind != "no_lambda_init":
        lam = lam + lambda_init
    attn = (
        maps[:, :, 0] + lam * maps[:, :, 1]
        if kind == "added"
        else maps[:, :, 0] - lam * maps[:, :, 1]
    )
    y = attn @ v  # (B, H, T, 2D)
    if kind == "norm_whole":
        y = y.transpose(1, 2).reshape(B, T, E)
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + m.eps) * m.norm_weight.repeat(H)
        y = y.reshape(B, T, H, 2 * D).transpose(1, 2)
    elif kind != "no_norm":
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + m.eps) * m.norm_weight
    if kind != "no_scale":
        y = y * (1 - lambda_init)
    out = m.out_proj(y.transpose(1, 2).reshape(B, T, E))
    return {"out": out, "attention": attn}


def make_differential_attention(seed, hidden):
    configs = (
        [(2, 6, 32, 2, 2, False), (2, 5, 48, 3, 5, True)]
        if hidden
        else [(2, 5, 32, 2, 1, False), (2, 6, 32, 4, 3, True)]
    )
    cases, mistakes = [], []
    for i, (B, T, E, H, layer_idx, masked) in enumerate(configs):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        m = tu.DifferentialAttention(E, H, layer_idx).eval()
        state = _random_state(m, gen, scale=2.0)
        x = _randn(gen, B, T, E)
        mask = tu.causal_mask(T) if masked else None
        with torch.no_grad():
            out, attn = m(x, attn_mask=mask, return_attention=True)
            wrong = {
                "the (1 - lambda_init) output scale is missing": _diff_variant(
                    m, x, mask, "no_scale", layer_idx
                ),
                "lambda_init is not added to lambda: lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init": _diff_variant(
                    m, x, mask, "no_lambda_init", layer_idx
                ),
                "the per-head RMSNorm is missing": _diff_variant(m, x, mask, "no_norm", layer_idx),
                "RMSNorm over the whole embedding: normalise each head's output (2D channels) separately": _diff_variant(
                    m, x, mask, "norm_whole", layer_idx
                ),
                "the two maps are added: subtract lambda times the second map": _diff_variant(
                    m, x, mask, "added", layer_idx
                ),
                "layer index off by one in lambda_init: use exp(-0.3 * (layer_idx - 1))": _diff_variant(
                    m, x, mask, "off_by_one", layer_idx
                ),
                "scores scaled by sqrt(2D): each half has size D = head_dim, scale by sqrt(D)": _diff_variant(
                    m, x, mask, "scale_2d", layer_idx
                ),
            }
        case_input = {
            "embed_dim": E,
            "num_heads": H,
            "layer_idx": layer_idx,
            "state_dict": state,
            "x": x,
            "attn_mask": mask,
        }
        cases.append({"input": case_input, "target": {"out": out, "attention": attn}})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.9 Convolution
# ---------------------------------------------------------------------------


def _conv_outputs(inp, flip=False, no_bias=False, mean_bias_grad=False, mean_weight_grad=False):
    x = inp["x"].clone().requires_grad_(True)
    w = inp["weight"].clone().requires_grad_(True)
    b = None if inp["bias"] is None else inp["bias"].clone().requires_grad_(True)
    kernel = w.flip(-1, -2) if flip else w
    # The wrong variants may use torch's conv: this file is never shipped.
    out = F.conv2d(x, kernel, None if no_bias else b, inp["stride"], inp["padding"])
    out.backward(inp["grad_out"])
    result = {"out": out.detach(), "grad_x": x.grad, "grad_weight": w.grad}
    if mean_weight_grad:
        result["grad_weight"] = w.grad / x.shape[0]
    if b is not None:
        grad_b = inp["grad_out"].sum((0, 2, 3))
        if no_bias:
            grad_b = torch.zeros_like(grad_b)
        if mean_bias_grad:
            grad_b = inp["grad_out"].mean((0, 2, 3))
        result["grad_bias"] = grad_b
    return result


def make_conv2d(seed, hidden):
    # (B, C, H, W, C_out, kernel, stride, padding, bias)
    if hidden:
        configs = [
            (2, 3, 7, 7, 4, (3, 3), 1, 1, True),
            (1, 2, 9, 6, 3, (2, 3), (2, 1), (0, 1), True),
            (2, 4, 5, 5, 2, (1, 1), 1, 0, False),
        ]
    else:
        configs = [
            (2, 3, 8, 8, 4, (3, 3), 1, 0, True),
            (2, 2, 7, 9, 3, (3, 2), 2, 1, True),
            (1, 3, 6, 6, 5, (2, 2), (1, 2), (1, 0), False),
        ]
    cases, mistakes = [], []
    for i, (B, C, H, W, C_out, kernel, stride, padding, bias) in enumerate(configs):
        gen = _gen(seed + i)
        x = _randn(gen, B, C, H, W)
        weight = _randn(gen, C_out, C, *kernel, scale=0.5)
        b = _randn(gen, C_out) if bias else None
        out_shape = F.conv2d(x, weight, b, stride, padding).shape
        inp = {
            "x": x,
            "weight": weight,
            "bias": b,
            "stride": stride,
            "padding": padding,
            "grad_out": _randn(gen, *out_shape),
        }
        target = runners.run_conv2d(tu, inp)
        wrong = {
            "the kernel is flipped (true convolution): nn.Conv2d computes a cross-correlation, no flip": _conv_outputs(
                inp, flip=True
            ),
            "the weight gradient is averaged over the batch: sum the per-image gradients": (
                _conv_outputs(inp, mean_weight_grad=True)
            ),
        }
        if bias:
            wrong["the bias is not added in forward"] = _conv_outputs(inp, no_bias=True)
            wrong["the bias gradient is averaged: sum grad_out over batch and positions"] = (
                _conv_outputs(inp, mean_bias_grad=True)
            )
        cases.append({"input": inp, "target": target})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.10 Attention rollout
# ---------------------------------------------------------------------------


def _rollout_variant(attentions, kind):
    rollout = None
    for attn in attentions:
        a = attn.amax(dim=1) if kind == "max_heads" else attn.mean(dim=1)
        if kind != "no_identity":
            a = a + torch.eye(a.shape[-1])
        if kind != "no_renorm":
            a = a / a.sum(-1, keepdim=True)
        if rollout is None:
            rollout = a
        else:
            rollout = rollout @ a if kind == "wrong_order" else a @ rollout
    cls_map = rollout[:, 1:, 0] if kind == "column" else rollout[:, 0, 1:]
    return {"rollout": rollout, "cls_map": cls_map}


def make_attention_rollout(seed, hidden):
    configs = [(3, 2, 3, 10), (2, 1, 4, 5)] if hidden else [(3, 2, 2, 9), (4, 2, 3, 17)]
    cases, mistakes = [], []
    for i, (L, B, H, T) in enumerate(configs):
        gen = _gen(seed + i)
        attentions = (_randn(gen, L, B, H, T, T, scale=2.0)).softmax(-1)  # (L, B, H, T, T)
        target = runners.run_attention_rollout(tu, {"attentions": attentions})
        wrong = {
            "the identity (residual connection) is not added to each layer's attention": _rollout_variant(
                attentions, "no_identity"
            ),
            "rows are not renormalised after adding the identity": _rollout_variant(
                attentions, "no_renorm"
            ),
            "layers multiplied in the wrong order: R = A_L @ ... @ A_1 (later layers on the left)": _rollout_variant(
                attentions, "wrong_order"
            ),
            "heads combined with max: average the heads": _rollout_variant(attentions, "max_heads"),
            "the CLS map is read from the CLS column: use the CLS row rollout[:, 0, 1:]": _rollout_variant(
                attentions, "column"
            ),
        }
        cases.append({"input": {"attentions": attentions}, "target": target})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.11 VisionTransformer
# ---------------------------------------------------------------------------


def _vit_variant(vit, x, kind):
    tokens = vit.patch_embed(x)
    if vit.pos_embed is not None and kind != "no_pos":
        tokens = vit.pos_embed(tokens)
    cls = vit.cls_token.expand(tokens.shape[0], -1, -1)
    tokens = torch.cat([tokens, cls], 1) if kind == "cls_last" else torch.cat([cls, tokens], 1)
    attentions = []
    for block in vit.blocks:
        tokens, attn = block(tokens, return_attention=True)
        attentions.append(attn)
    if kind != "no_norm":
        tokens = vit.norm(tokens)
    feature = {"cls_last": tokens[:, -1], "mean_pool": tokens.mean(1)}.get(kind, tokens[:, 0])
    return {"logits": vit.head(feature), "attention": torch.stack(attentions)}


def make_vision_transformer(seed, hidden):
    kinds = (
        ["learned2d", "sinusoidal", "none"]
        if hidden
        else ["learned1d", "learned2d", "sinusoidal", "none"]
    )
    cases, mistakes = [], []
    for i, pos in enumerate(kinds):
        config = {
            "img_size": 32,
            "patch_size": 8,
            "in_channels": 3,
            "num_classes": 5 if hidden else 10,
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "dropout": 0.0,
            "pos_embedding": pos,
        }
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        vit = tu.VisionTransformer(**config).eval()
        state = _random_state(vit, gen, scale=1.5)
        x = _randn(gen, 2, 3, 32, 32)
        with torch.no_grad():
            logits, attentions = vit(x, return_attention=True)
            n = vit.patch_embed.num_patches
            pos_table = (
                vit.pos_embed(torch.zeros(1, n, 16))[0] if vit.pos_embed is not None else None
            )
            wrong = {
                "the CLS token is appended at the end: prepend it (token 0)": _vit_variant(
                    vit, x, "cls_last"
                ),
                "the final LayerNorm self.norm is skipped": _vit_variant(vit, x, "no_norm"),
                "the head reads the mean of all tokens: classify from the CLS token (token 0)": _vit_variant(
                    vit, x, "mean_pool"
                ),
            }
            if pos != "none":
                wrong["the positional encoding self.pos_embed is not added"] = _vit_variant(
                    vit, x, "no_pos"
                )
        case_input = {"config": config, "state_dict": state, "x": x, "pos_table": pos_table}
        cases.append(
            {
                "input": case_input,
                "target": {"logits": logits, "attention": torch.stack(attentions)},
            }
        )
        mistakes.append(wrong)
    return cases, mistakes


MAKERS = {
    "self_attention": make_self_attention,
    "layer_norm": make_layer_norm,
    "multi_head_attention": make_multi_head_attention,
    "positional_encoding": make_positional_encoding,
    "patch_embedding": make_patch_embedding,
    "encoder_layer": make_encoder_layer,
    "decoder_layer": make_decoder_layer,
    "differential_attention": make_differential_attention,
    "conv2d": make_conv2d,
    "attention_rollout": make_attention_rollout,
    "vision_transformer": make_vision_transformer,
}


# ---------------------------------------------------------------------------
# Checks and writing
# ---------------------------------------------------------------------------


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


def roles(assignment_path=None):
    """exercise id -> "graded", "practice" or "given", from instructor/assignment.yml."""
    from autograder.assignment import load_assignment

    assignment = load_assignment(
        assignment_path or os.path.join(ROOT, "instructor", "assignment.yml")
    )
    role = {i: "given" for i in MAKERS}
    role.update({i: "practice" for i in assignment.practice_exercises})
    role.update({i: "graded" for i in assignment.student_exercises})
    return role


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


class _RawBytes:
    """Pickles as numpy.frombuffer(data, dtype)."""

    def __init__(self, data, dtype):
        self.data, self.dtype = data, dtype

    def __reduce__(self):
        return (numpy.frombuffer, (self.data, self.dtype))


class _FlatTensor:
    """Pickles as torch.tensor(numpy.frombuffer(...)): a copy, so it is writable."""

    def __init__(self, tensor):
        self.array = tensor.detach().cpu().contiguous().reshape(-1).numpy()

    def __reduce__(self):
        return (torch.tensor, (_RawBytes(self.array.tobytes(), str(self.array.dtype)),))


class _ReproduciblePickler(pickle.Pickler):
    """Pickles tensors by value only.

    torch's own tensor pickling embeds a memory address as the storage key, so the
    same tensor gives different bytes on every run. Here a tensor becomes
    ``torch.tensor(numpy.frombuffer(raw_bytes, dtype)).reshape(shape)``: plain
    ``pickle.load`` still returns an ordinary torch tensor.
    """

    def reducer_override(self, obj):
        if type(obj) is torch.Tensor:
            return (torch.Tensor.reshape, (_FlatTensor(obj), tuple(obj.shape)))
        return NotImplemented


def _dumps(obj):
    buffer = io.BytesIO()
    _ReproduciblePickler(buffer, protocol=PICKLE_PROTOCOL).dump(obj)
    return buffer.getvalue()


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["public", "hidden", "both"], default="both")
    parser.add_argument(
        "--out_dir", default=None, help="default: test_data/ or autograder/reference_data/"
    )
    args = parser.parse_args(argv)
    splits = ["public", "hidden"] if args.split == "both" else [args.split]
    if args.out_dir is not None and len(splits) > 1:
        parser.error("--out_dir needs --split public or --split hidden")
    for split in splits:
        for path in generate(args.out_dir, split):
            print(f"{os.path.getsize(path):>8} bytes  {os.path.relpath(path, ROOT)}")
        print(spread_table(args.out_dir or OUT_DIRS[split]))


if __name__ == "__main__":
    main()
