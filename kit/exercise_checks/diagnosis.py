"""What is off, when no known mistake matches: computed against the reference on the same case.

A known mistake names a cause; when the answer matches none, a student still needs to know
where to look. ``diagnose`` compares the student's outputs with the stored targets and says,
in plain words, only what it measured:

- which outputs are right and which are wrong (the attention right and 'out' wrong puts the
  bug after the softmax);
- along which axis the error lives ("the first position is right and every later one is
  off", "head 1 is off, head 0 right"), with the axes named per exercise;
- what a probability table does ("rows of the attention sum to 0.7, not 1"; weight on keys
  the mask blocks; rows right where the mask blocks nothing);
- a simple relation to the target (a constant factor, a flipped sign, a transpose, the
  right numbers in other places);
- across cases, what the passing and failing cases differ in ("right for stride=1, wrong
  for stride=2"), and for the convolution, probes against torch's own conv2d on other
  strides and paddings.

Every sentence is a measurement, never a guess at a mistake the student may not have made.
Only torch is imported: the sandbox carries this package.
"""

import torch

from kit.exercise_checks.compare import named_outputs

# Axis names of each output, so that a message says "query position 3", not "dim 2".
_TOKENS3 = ("image", "position", "channel")
_ATTENTION4 = ("image", "head", "query row", "key column")
AXES = {
    ("self_attention", "output"): _TOKENS3,
    ("layer_norm", "output"): _TOKENS3,
    ("multi_head_attention", "out"): _TOKENS3,
    ("multi_head_attention", "attention"): _ATTENTION4,
    ("positional_encoding", "sinusoidal_encoding_1d"): ("position", "column"),
    ("positional_encoding", "sinusoidal_encoding_2d"): ("token", "column"),
    ("positional_encoding", "*"): ("image", "token", "channel"),
    ("patch_embedding", "img_to_patch"): ("image", "patch", "entry of the patch vector"),
    ("patch_embedding", "img_to_patch(flatten_channels=False)"): (
        "image",
        "patch",
        "channel",
        "row inside the patch",
        "column inside the patch",
    ),
    ("patch_embedding", "PatchEmbedding"): ("image", "patch", "channel"),
    ("encoder_layer", "out"): _TOKENS3,
    ("encoder_layer", "attention"): _ATTENTION4,
    ("decoder_layer", "output"): _TOKENS3,
    ("differential_attention", "out"): _TOKENS3,
    ("differential_attention", "attention"): _ATTENTION4,
    ("conv2d", "out"): ("image", "output channel", "output row", "output column"),
    ("conv2d", "grad_x"): ("image", "input channel", "input row", "input column"),
    ("conv2d", "grad_weight"): ("output channel", "input channel", "kernel row", "kernel column"),
    ("conv2d", "grad_bias"): ("output channel",),
    ("attention_rollout", "rollout"): ("image", "output token (row)", "input token (column)"),
    ("attention_rollout", "cls_map"): ("image", "patch"),
    ("vision_transformer", "logits"): ("image", "class"),
    ("vision_transformer", "attention"): ("layer", "image", "head", "query row", "key column"),
}

# Where to look when one output is right and another wrong: (right, wrong) -> hint.
_SPLIT_HINTS = {
    ("multi_head_attention", "attention", "out"): "the attention weights are right, so look "
    "after the softmax: weights @ V, merging the heads back to (B, T, E), out_proj",
    ("differential_attention", "attention", "out"): "the difference maps are right, so look "
    "after them: A @ V, the per-head RMSNorm, the (1 - lambda_init) scale, merging the heads",
    ("encoder_layer", "attention", "out"): "the attention sub-layer gets the right input, so "
    "look at what follows it: the residual additions, norm2, the MLP",
    ("conv2d", "out", "grad_x"): "your forward is right; the backward's grad_x is off",
    ("conv2d", "out", "grad_weight"): "your forward is right; the backward's grad_weight is off",
    ("conv2d", "out", "grad_bias"): "your forward is right; the backward's grad_bias is off",
    ("vision_transformer", "attention", "logits"): "every block gets the right tokens, so "
    "look after the blocks: self.norm, which token (or mean) the head reads, self.head",
    ("attention_rollout", "rollout", "cls_map"): "the rollout is right, so look at how the "
    "CLS map is read from it",
}


def _axes(exercise_id, key, ndim):
    names = AXES.get((exercise_id, key)) or AXES.get((exercise_id, "*"))
    if names is None or len(names) != ndim:
        return tuple(f"index along dim {d}" for d in range(ndim))
    return names


def _bad(got, expected, rtol, atol):
    g, e = got.detach().cpu().double(), expected.detach().cpu().double()
    return ~torch.isclose(g, e, rtol=rtol, atol=atol)


def _ranges(indices):
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    text = ", ".join(parts[:6])
    return text + (", ..." if len(parts) > 6 else "")


def describe_split(label, bad):
    """One sentence about which indices along one axis are off (``bad``: bool per index), or
    None when all or none are."""
    n = len(bad)
    off = [i for i, b in enumerate(bad) if b]
    right = [i for i, b in enumerate(bad) if not b]
    if not off or not right:
        return None
    if off == [n - 1]:
        return f"only the last {label} is off; the others are right"
    if off == [0]:
        return f"only the first {label} is off; the others are right"
    if right == [0]:
        return f"the first {label} is right and every later one is off"
    if right == [n - 1]:
        return f"every {label} is off except the last"
    return f"{label} {_ranges(off)} off, {_ranges(right)} right (counting from 0)"


def _axis_lines(exercise_id, key, got, expected, rtol, atol):
    bad = _bad(got, expected, rtol, atol)
    if bad.dim() == 0:
        return []
    lines = []
    names = _axes(exercise_id, key, bad.dim())
    for d, label in enumerate(names):
        if bad.shape[d] < 2 or (label == "image" and bad.dim() > 1):
            continue  # every image of a batch goes through the same code
        others = [k for k in range(bad.dim()) if k != d]
        per_index = bad.permute(d, *others).reshape(bad.shape[d], -1).any(dim=1).tolist()
        sentence = describe_split(label, per_index)
        if sentence:
            lines.append(sentence)
    return lines[:2]


def _is_distribution(t):
    """Rows (last dim) of non-negative numbers summing to 1: attention weights, a rollout."""
    if t.dim() < 2 or t.shape[-1] < 2 or not t.is_floating_point():
        return False
    return bool((t >= -1e-6).all()) and bool(((t.sum(-1) - 1).abs() < 1e-3).all())


def _row_sum_lines(exercise_id, key, got, expected):
    """Rows with one common sum in the target (a difference of two distributions sums to
    1 - lambda in every row) and another common sum in the answer."""
    g, e = got.detach().cpu().double(), expected.detach().cpu().double()
    if e.dim() < 2 or e.shape[-1] < 2 or _is_distribution(e):
        return []
    want, have = e.sum(-1), g.sum(-1)
    if not torch.isfinite(have).all() or (want.max() - want.min()).item() > 1e-4:
        return []
    lo, hi = have.min().item(), have.max().item()
    if abs(have.mean().item() - want.mean().item()) < 1e-3:
        return []
    span = f"{lo:.3g}" if hi - lo < 1e-3 else f"between {lo:.3g} and {hi:.3g}"
    line = f"rows of '{key}' sum to {span}; the expected rows all sum to {want.mean().item():.3g}"
    if exercise_id == "differential_attention" and hi - lo < 1e-3:
        line += (
            f" (each row of A sums to 1 - lambda: your lambda works out to {1 - lo:.3g}, "
            f"the expected one to {1 - want.mean().item():.3g})"
        )
    return [line]


def _distribution_lines(key, got, expected, case_input):
    lines = []
    g, e = got.detach().cpu().double(), expected.detach().cpu().double()
    if not _is_distribution(e):
        return lines
    sums = g.sum(-1)
    if torch.isfinite(sums).all() and not ((sums - 1).abs() < 1e-3).all():
        lo, hi = sums.min().item(), sums.max().item()
        span = f"{lo:.3g}" if abs(hi - lo) < 1e-3 else f"between {lo:.3g} and {hi:.3g}"
        line = f"rows of '{key}' sum to {span}, not 1 (each row is a distribution over the keys)"
        if g.dim() >= 2 and g.shape[-1] == g.shape[-2] and ((g.sum(-2) - 1).abs() < 1e-3).all():
            line += "; your columns sum to 1: the normalisation runs over the other dim"
        lines.append(line)
    blocked = e == 0
    if blocked.any() and not blocked.all():
        leak = g[blocked].abs().max().item()
        if leak > 1e-6:
            lines.append(
                f"'{key}' gives weight (up to {leak:.3g}) to positions that must get exactly 0 "
                "(keys the mask blocks)"
            )
        cut = ((g == 0) & ~blocked).sum().item()
        if cut:
            lines.append(f"'{key}' is exactly 0 at {cut} positions the mask allows")
    return lines


def _relation_lines(key, got, expected, rtol, atol, axes=None):
    g, e = got.detach().cpu().double().flatten(), expected.detach().cpu().double().flatten()
    if e.numel() < 2 or not torch.isfinite(g).all():
        return []
    scale = e.abs().max().item() or 1.0
    tol = max(atol, rtol * scale) * 10

    def near(a, b):
        return (a - b).abs().max().item() <= tol

    if not g.any():  # a placeholder left in, or a product with an all-zero factor
        return [f"'{key}' is all zeros"]
    energy = (e * e).sum().item()
    if energy > 0:
        c = (g * e).sum().item() / energy
        if abs(c - 1) > 1e-3 and near(g, c * e):
            if abs(c + 1) < 1e-3:
                return [f"'{key}' is the expected output with its sign flipped"]
            return [f"'{key}' is {c:.4g} times the expected output everywhere (a constant factor)"]
    shift = (g - e).mean().item()
    if abs(shift) > tol and near(g, e + shift):
        return [f"'{key}' is the expected output plus a constant {shift:.4g}"]
    got_t, exp_t = got.detach().cpu().double(), expected.detach().cpu().double()
    err = got_t - exp_t
    for d, label in enumerate(axes or ()):
        n = err.shape[d]
        if n < 2 or err.numel() == n:
            continue
        per_index = err.movedim(d, 0).reshape(n, -1)
        if near(per_index.flatten(), per_index[:, :1].expand_as(per_index).flatten()):
            return [
                f"'{key}' is off by an amount that depends only on the {label} (the same at "
                f"every other index): an offset per {label}"
            ]
    if got_t.dim() >= 2 and got_t.shape[-1] == got_t.shape[-2] and got_t.shape[-1] > 1:
        if near(got_t.transpose(-1, -2).flatten(), e):
            return [f"'{key}' is the expected output with its last two dims swapped (transposed)"]
    if near(g.sort().values, e.sort().values):
        return [
            f"'{key}' holds the right numbers in the wrong places: check the order of your "
            "reshape/permute/transpose (or which row/column you read)"
        ]
    return []


def _mask_row_lines(exercise_id, key, got, expected, rtol, atol, case_input):
    """Attention outputs: are the rows right exactly where the mask blocks nothing?"""
    mask = case_input.get("attn_mask") if isinstance(case_input, dict) else None
    if mask is None or key not in ("out", "attention") or got.dim() < 3:
        return []
    rows_free = mask.all(dim=-1)  # (T,) or (B, T): queries for which nothing is blocked
    if rows_free.all() or not rows_free.any():
        return []
    bad = _bad(got, expected, rtol, atol)
    if key == "attention":  # (B, H, T, S)
        bad_rows = bad.any(dim=-1).any(dim=1)  # (B, T)
    else:  # (B, T, E)
        bad_rows = bad.any(dim=-1)
    free = rows_free.expand_as(bad_rows) if rows_free.dim() == 1 else rows_free
    if not bad_rows[free].any() and bad_rows[~free].any():
        return [
            "right for the queries whose mask row is all True (nothing blocked), wrong where "
            "the mask blocks some keys: look at how and where the mask is applied"
        ]
    if bad_rows[free].any() and not bad_rows[~free].any():
        return ["wrong only for the queries whose mask row is all True (nothing blocked)"]
    return []


def _output_lines(exercise_id, got, expected, rtol, atol):
    """Which of several outputs are right, and where that points."""
    got, expected = named_outputs(got), named_outputs(expected)
    if len(expected) < 2 or got.keys() != expected.keys():
        return [], list(expected)
    right, wrong = [], []
    for key, e in expected.items():
        g = got[key]
        ok = (
            isinstance(g, torch.Tensor)
            and g.shape == e.shape
            and not _bad(g, e, rtol, atol).any().item()
        )
        (right if ok else wrong).append(key)
    if not right or not wrong:
        return [], wrong
    lines = [f"right: {', '.join(right)}; wrong: {', '.join(wrong)}"]
    for r in right:
        for w in wrong:
            hint = _SPLIT_HINTS.get((exercise_id, r, w))
            if hint:
                lines.append(hint)
                return lines, wrong
    return lines, wrong


# ---------------------------------------------------------------------------
# Across cases: what the passing and failing cases differ in.
# ---------------------------------------------------------------------------


def _mask_kind(mask):
    if mask is None:
        return "no mask"
    if bool(mask.all()):
        return "an all-True mask"
    if mask.dim() == 2 and mask.shape[0] == mask.shape[1] and torch.equal(mask, mask.tril()):
        return "a causal mask"
    return "a per-image (B, T, S) mask" if mask.dim() == 3 else "a (T, S) mask"


def case_features(exercise_id, case_input):
    """Readable properties of a case that may decide whether an answer is right."""
    c = case_input
    if exercise_id == "multi_head_attention":
        cross = c["key"] is not c["query"] and not torch.equal(c["key"], c["query"])
        return {
            "mask": _mask_kind(c["attn_mask"]),
            "attention": "cross-attention" if cross else "self-attention",
            "heads": f"num_heads={c['num_heads']}",
        }
    if exercise_id == "encoder_layer":
        return {"mask": _mask_kind(c["attn_mask"]), "heads": f"num_heads={c['num_heads']}"}
    if exercise_id == "decoder_layer":
        return {
            "memory mask": "a memory mask" if c["memory_mask"] is not None else "no memory mask"
        }
    if exercise_id == "differential_attention":
        return {
            "mask": _mask_kind(c["attn_mask"]),
            "depth": f"layer_idx={c['layer_idx']}",
            "heads": f"num_heads={c['num_heads']}",
        }
    if exercise_id == "conv2d":
        return {
            "stride": f"stride={c['stride']}",
            "padding": f"padding={c['padding']}",
            "bias": "with bias" if c["bias"] is not None else "without bias",
        }
    if exercise_id == "positional_encoding":
        return {"dim": f"dim={c['dim']}", "grid": f"a {c['height']}x{c['width']} grid"}
    if exercise_id == "patch_embedding":
        return {
            "patch": f"patch_size={c['patch_size']}",
            "channels": f"{c['x'].shape[1]} channel(s)",
        }
    if exercise_id == "attention_rollout":
        return {"layers": f"{c['attentions'].shape[0]} layers"}
    if exercise_id == "vision_transformer":
        return {
            "pos": f"pos_embedding={c['config']['pos_embedding']!r}",
            "pool": f"pool={c['config'].get('pool', 'cls')!r}",
        }
    return {}


def _case_lines(exercise_id, inputs, passed):
    """'right for stride=1, wrong for stride=2', from the cases that pass and those that fail."""
    ran = [i for i, p in enumerate(passed) if p is not None]
    good = [i for i in ran if passed[i]]
    bad = [i for i in ran if not passed[i]]
    if not good or not bad:
        return []
    features = [case_features(exercise_id, inputs[i]) for i in range(len(inputs))]
    separating = []
    for name in features[good[0]]:
        right = {features[i][name] for i in good}
        wrong = {features[i][name] for i in bad}
        if not right & wrong:
            separating.append((" / ".join(sorted(right)), " / ".join(sorted(wrong))))
    if len(separating) == 1:
        return [f"right for {separating[0][0]}, wrong for {separating[0][1]}"]
    if separating:  # all of them: naming one alone could point at the wrong one
        return [
            f"right for the case(s) with {', '.join(r for r, _ in separating)}; wrong for "
            f"those with {', '.join(w for _, w in separating)} (any of these may matter)"
        ]
    passing = ", ".join(str(i + 1) for i in good)
    failing = ", ".join(str(i + 1) for i in bad)
    return [f"case(s) {passing} pass and case(s) {failing} fail"]


# ---------------------------------------------------------------------------
# The convolution: probes against torch's own conv2d (the student side has no reference
# solution, but torch's conv2d is one).
# ---------------------------------------------------------------------------

_CONV_PROBES = [(1, 0), (2, 0), (1, 1), (2, 1)]


def conv2d_probes(tu, run_student):
    """Which (stride, padding) settings the student's convolution gets right, for the forward
    and for each gradient, against F.conv2d on a small seeded input; one line, or []."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(7)
    verdict = {}
    for stride, padding in _CONV_PROBES:
        x = torch.randn(2, 2, 7, 6, generator=gen)
        w = torch.randn(3, 2, 3, 3, generator=gen)
        b = torch.randn(3, generator=gen)
        xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
        out = F.conv2d(xr, wr, br, stride, padding)
        grad = torch.randn(out.shape, generator=gen)
        out.backward(grad)
        expected = {
            "out": out.detach(),
            "grad_x": xr.grad,
            "grad_weight": wr.grad,
            "grad_bias": br.grad,
        }
        inp = {
            "x": x,
            "weight": w,
            "bias": b,
            "stride": stride,
            "padding": padding,
            "grad_out": grad,
        }
        try:
            got = run_student(tu, inp)
        except Exception:
            verdict[(stride, padding)] = "raises"
            continue
        wrong = [
            k
            for k, e in expected.items()
            if not isinstance(got.get(k), torch.Tensor)
            or got[k].shape != e.shape
            or _bad(got[k], e, 1e-4, 1e-4).any().item()
        ]
        verdict[(stride, padding)] = "wrong " + "/".join(wrong) if wrong else "right"
    if len(set(verdict.values())) < 2:
        return []
    parts = [f"stride={s}, padding={p}: {v}" for (s, p), v in verdict.items()]
    return ["against torch's conv2d on a small input: " + "; ".join(parts)]


def multi_head_attention_mask_probe(tu, run_student, case_input):
    """Rerun a masked case with the mask all True (nothing blocked), against torch's own
    attention with the same weights: says whether the error lies in the masking."""
    from kit.exercise_checks.stand_ins import TorchMultiHeadAttention

    mask = case_input.get("attn_mask")
    if mask is None or bool(mask.all()):
        return []
    probe = dict(case_input, attn_mask=torch.ones_like(mask))
    m = tu.MultiHeadAttention(case_input["embed_dim"], case_input["num_heads"])
    m.load_state_dict(case_input["state_dict"])
    with torch.no_grad():
        out, attn = TorchMultiHeadAttention(m.eval())(
            probe["query"], probe["key"], probe["value"], probe["attn_mask"], True
        )
    try:
        got = run_student(tu, probe)
    except Exception:
        return []
    if _passes(got, {"out": out, "attention": attn}, 1e-3, 1e-5):
        return [
            "right when the mask is all True (nothing blocked): the error is in how or where "
            "the mask is applied"
        ]
    return ["wrong even when the mask is all True (nothing blocked): look beyond the mask"]


# ---------------------------------------------------------------------------


def diagnose(exercise_id, index, inputs, outputs, targets, tolerances, tu=None, probe=None):
    """Lines saying what is off on case ``index`` (the first failing one) and across cases.

    inputs/outputs/targets/tolerances: one entry per case (an output is None when its case
    did not run; tolerances are (rtol, atol)). ``probe``: the exercise's runner, for the
    convolution's probes. Never raises: a diagnosis that fails is left out.
    """
    try:
        return _diagnose(exercise_id, index, inputs, outputs, targets, tolerances, tu, probe)
    except Exception:  # the diagnosis helps; it must never hide the failure itself
        return []


def _passes(got, expected, rtol, atol):
    got, expected = named_outputs(got), named_outputs(expected)
    if got.keys() != expected.keys():
        return False
    for key, e in expected.items():
        g = got[key]
        if not isinstance(g, torch.Tensor) or g.shape != e.shape or _bad(g, e, rtol, atol).any():
            return False
    return True


def _diagnose(exercise_id, index, inputs, outputs, targets, tolerances, tu, probe):
    rtol, atol = tolerances[index]
    got, expected = outputs[index], targets[index]
    lines, wrong = _output_lines(exercise_id, got, expected, rtol, atol)
    got_named, exp_named = named_outputs(got), named_outputs(expected)
    for key in wrong[:2]:
        g, e = got_named.get(key), exp_named[key]
        if not isinstance(g, torch.Tensor) or g.shape != e.shape:
            continue
        axes = _axes(exercise_id, key, g.dim())
        found = _relation_lines(key, g, e, rtol, atol, axes)
        found += [f"'{key}': {s}" for s in _axis_lines(exercise_id, key, g, e, rtol, atol)]
        found += _distribution_lines(key, g, e, inputs[index])
        found += _row_sum_lines(exercise_id, key, g, e)
        found += _mask_row_lines(exercise_id, key, g, e, rtol, atol, inputs[index])
        share = _bad(g, e, rtol, atol).double().mean().item()
        if not found and share > 0.9:  # a few entries right by chance change nothing
            parts = [a for a in axes if a != "image" and not a.startswith("index")]
            where = f" (no {' and no '.join(parts)} is right)" if parts else ""
            found = [f"'{key}' is off everywhere{where}: the error is not in one part of it"]
        lines += found[:4]
    # A case without the failing outputs (no bias, no grad_bias) says nothing about them.
    passed = [
        None
        if out is None or not set(wrong) <= set(named_outputs(tgt))
        else _passes(out, tgt, *tol)
        for out, tgt, tol in zip(outputs, targets, tolerances)
    ]
    lines += _case_lines(exercise_id, inputs, passed)
    if exercise_id == "conv2d" and tu is not None and probe is not None:
        lines += conv2d_probes(tu, probe)
    if exercise_id == "multi_head_attention" and tu is not None and probe is not None:
        lines += multi_head_attention_mask_probe(tu, probe, inputs[index])
    return list(dict.fromkeys(lines))


def format_diagnosis(lines):
    if not lines:
        return ""
    return "\nWhat is off (measured against the reference):\n" + "\n".join(
        f"  - {s}" for s in lines
    )
