"""Tests for the exercises of Question 1 (transformer_utils.py).

Run one exercise's test, or all of them:

    python -m unittest test_functions.TestClass.test_self_attention -v
    python -m unittest test_functions -v        (or: python -m pytest test_functions.py)

Each test builds your module, loads fixed weights into it, runs it on the
inputs stored in test_data/<exercise>.pkl and compares with the stored
outputs of the reference solution. When your output is wrong, the message
gives the shapes, the size of the error and, if your output equals the output
of a common mistake, the likely mistake.

How this file is organised (you only need to read it if you are curious):
* ``@exercise(...)`` next to each test declares its number, points and data
  file; the autograder reads these values without importing this file.
* ``RUNNERS[exercise_id](tu, case_input)`` builds the module(s) from one
  stored case and returns your output(s); the autograder calls the same runners.
* ``forbidden_ops(exercise_id)`` fails a test that calls torch's own version
  of what the exercise implements.
* Exercises built from other exercises (encoder/decoder layer, ViT) are
  tested with torch's own layers in place of your LayerNorm, attention, etc.,
  so that one unfinished exercise never fails another exercise's test.
"""

import atexit
import contextlib
import functools
import importlib
import os
import pickle
import traceback
import unittest
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_data")

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


# ---------------------------------------------------------------------------
# Forbidden torch built-ins
# ---------------------------------------------------------------------------

_ATTENTION_OPS = ("scaled_dot_product", "_native_multi_head_attention", "flash_attention")
_NORM_OPS = ("layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm")
_CONV_OPS = ("convolution", "conv2d", "conv_depthwise", "slow_conv", "thnn_conv")

# Per exercise: names of torch functions (as torch.nn.functional / torch call them)
# and substrings of low-level "aten" operator names that are not allowed.
FORBIDDEN = {
    "self_attention": {
        "functions": ("scaled_dot_product_attention", "multi_head_attention_forward"),
        "aten": _ATTENTION_OPS,
    },
    "layer_norm": {
        "functions": ("layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm"),
        "aten": _NORM_OPS,
    },
    "multi_head_attention": {
        "functions": ("scaled_dot_product_attention", "multi_head_attention_forward"),
        "aten": _ATTENTION_OPS,
    },
    "patch_embedding": {"functions": ("conv2d",), "aten": _CONV_OPS},
    "encoder_layer": {"functions": (), "aten": ("_transformer_encoder_layer_fwd",)},
    "differential_attention": {
        "functions": (
            "scaled_dot_product_attention",
            "multi_head_attention_forward",
            "layer_norm",
            "group_norm",
            "rms_norm",
        ),
        "aten": _ATTENTION_OPS + _NORM_OPS,
    },
    "conv2d": {"functions": ("conv2d", "conv_transpose2d"), "aten": _CONV_OPS},
}


class ForbiddenOpError(AssertionError):
    """Raised when an exercise uses torch's built-in version of itself."""


class _FunctionRecorder(TorchFunctionMode):
    """Records the names of the torch functions called (e.g. 'layer_norm')."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class _AtenRecorder(TorchDispatchMode):
    """Records the low-level operators that actually ran (e.g. 'aten.native_layer_norm')."""

    def __init__(self):
        super().__init__()
        self.names = set()

    @classmethod
    def _should_skip_dynamo(cls):
        # Nothing is compiled under this mode. Without this, torch wraps __torch_dispatch__
        # in a lazy dynamo.disable whose first call imports torch._dynamo: about 2 s, half
        # of the whole suite's CPU time (and of a grading run's).
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbidden_ops(exercise_id):
    """Fail if the code run inside uses torch's own version of the exercise.

    Usage: ``with forbidden_ops("layer_norm"): out = norm(x)``. Raises
    ForbiddenOpError naming the operator that was used.
    """
    rules = FORBIDDEN.get(exercise_id, {"functions": (), "aten": ()})
    functions, aten = _FunctionRecorder(), _AtenRecorder()

    def check():
        used = sorted(name for name in functions.names if name in rules["functions"])
        used += sorted(op for op in aten.names if any(bad in op for bad in rules["aten"]))
        if used:
            raise ForbiddenOpError(
                f"exercise '{exercise_id}' used torch's built-in {used[0]!r}; this exercise must "
                "be built from basic tensor operations (matmul, sum, mean, exp, softmax, "
                "reshape, ...)."
            )

    with functions, aten:
        try:
            yield
        except Exception:
            check()  # a forbidden op explains the crash better than the crash itself
            raise
    check()


# ---------------------------------------------------------------------------
# Stand-ins built from torch's own layers (used only to test composite exercises)
# ---------------------------------------------------------------------------


class TorchLayerNorm(nn.Module):
    """Same parameters as a LayerNorm exercise module, computed by F.layer_norm."""

    def __init__(self, norm):
        super().__init__()
        self.w, self.b, self.eps = norm.w, norm.b, norm.eps

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


class TorchMultiHeadAttention(nn.Module):
    """Same weights and call signature as MultiHeadAttention, computed by torch."""

    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, attn_mask=None, return_attention=False):
        m = self.mha
        if attn_mask is not None:
            attn_mask = ~attn_mask  # torch's convention: True = blocked
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.repeat_interleave(m.num_heads, dim=0)  # (B*H, T, S)
        out, attn = F.multi_head_attention_forward(
            query.transpose(0, 1),  # torch's function wants (T, B, E)
            key.transpose(0, 1),
            value.transpose(0, 1),
            m.embed_dim,
            m.num_heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([m.q_proj.bias, m.k_proj.bias, m.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=m.out_proj.weight,
            out_proj_bias=m.out_proj.bias,
            training=False,
            need_weights=True,
            attn_mask=attn_mask,
            use_separate_proj_weight=True,
            q_proj_weight=m.q_proj.weight,
            k_proj_weight=m.k_proj.weight,
            v_proj_weight=m.v_proj.weight,
            average_attn_weights=False,
        )
        out = out.transpose(0, 1)  # (B, T, E)
        return (out, attn) if return_attention else out


class TorchPatchEmbedding(nn.Module):
    """Same weights as PatchEmbedding; a stride-p convolution does the same job."""

    def __init__(self, patch_embed):
        super().__init__()
        self.p = patch_embed.patch_size
        self.proj = patch_embed.proj

    def forward(self, x):
        E, p = self.proj.out_features, self.p
        w = self.proj.weight.reshape(E, -1, p, p)  # (E, C, p, p)
        return F.conv2d(x, w, self.proj.bias, stride=p).flatten(2).transpose(1, 2)


class AddTable(nn.Module):
    """Adds a stored positional table (N, E) to the patch tokens."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return x + self.table


class TorchEncoderLayer(nn.Module):
    """Same weights as TransformerEncoderLayer, computed by nn.TransformerEncoderLayer."""

    def __init__(self, layer):
        super().__init__()
        E, H = layer.attn.embed_dim, layer.attn.num_heads
        fc1, fc2 = layer.mlp[0], layer.mlp[3]
        torch_layer = nn.TransformerEncoderLayer(
            E, H, fc1.out_features, dropout=0.0, activation="gelu",
            layer_norm_eps=layer.norm1.eps, batch_first=True, norm_first=True,
        )  # fmt: skip
        a = layer.attn
        weights = {
            "self_attn.in_proj_weight": torch.cat(
                [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
            ),
            "self_attn.in_proj_bias": torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
            "self_attn.out_proj.weight": a.out_proj.weight,
            "self_attn.out_proj.bias": a.out_proj.bias,
            "linear1.weight": fc1.weight,
            "linear1.bias": fc1.bias,
            "linear2.weight": fc2.weight,
            "linear2.bias": fc2.bias,
            "norm1.weight": layer.norm1.w,
            "norm1.bias": layer.norm1.b,
            "norm2.weight": layer.norm2.w,
            "norm2.bias": layer.norm2.b,
        }
        torch_layer.load_state_dict(weights)
        self.layer = torch_layer.eval()

    def forward(self, x, attn_mask=None, return_attention=False):
        blocked = None if attn_mask is None else ~attn_mask
        out = self.layer(x, src_mask=blocked)
        if not return_attention:
            return out
        h = self.layer.norm1(x)
        _, attn = self.layer.self_attn(
            h, h, h, attn_mask=blocked, need_weights=True, average_attn_weights=False
        )
        return out, attn


# ---------------------------------------------------------------------------
# Runners: build the module(s) from a stored case and return the output(s)
# ---------------------------------------------------------------------------


def _load(module, state_dict):
    module.load_state_dict(state_dict)  # strict: parameter names must match
    return module.eval()


def run_self_attention(tu, case):
    sd = case["weight"]
    input_dim = sd["W_query.weight"].shape[1]
    dims = [sd[f"W_{n}.weight"].shape[0] for n in ("query", "key", "value")]
    model = _load(tu.SelfAttention(input_dim, *dims), sd)
    with torch.no_grad():
        return model(case["x"].clone())


def run_layer_norm(tu, case):
    norm = tu.LayerNorm(case["x"].shape[-1])
    norm.w = nn.Parameter(case["w"].clone())
    norm.b = nn.Parameter(case["b"].clone())
    with torch.no_grad():
        return norm(case["x"].clone())


def run_multi_head_attention(tu, case):
    mha = _load(tu.MultiHeadAttention(case["embed_dim"], case["num_heads"]), case["state_dict"])
    with torch.no_grad():
        out, attn = mha(
            case["query"], case["key"], case["value"], case["attn_mask"], return_attention=True
        )
    return {"out": out, "attention": attn}


def run_positional_encoding(tu, case):
    N, C, h, w = case["num_positions"], case["dim"], case["height"], case["width"]
    learned1d = _load(tu.LearnedPositionalEncoding1D(h * w, C), case["learned1d"])
    learned2d = _load(tu.LearnedPositionalEncoding2D(h, w, C), case["learned2d"])
    x = case["x"]  # (B, h*w, C)
    with torch.no_grad():
        return {
            "sinusoidal_encoding_1d": tu.sinusoidal_encoding_1d(N, C),
            "sinusoidal_encoding_2d": tu.sinusoidal_encoding_2d(h, w, C),
            "SinusoidalPositionalEncoding1D": tu.SinusoidalPositionalEncoding1D()(x),
            "SinusoidalPositionalEncoding2D": tu.SinusoidalPositionalEncoding2D(h, w)(x),
            "LearnedPositionalEncoding1D": learned1d(x),
            "LearnedPositionalEncoding2D": learned2d(x),
        }


def run_patch_embedding(tu, case):
    x, p = case["x"], case["patch_size"]
    embed = tu.PatchEmbedding(x.shape[-1], p, x.shape[1], case["embed_dim"])
    embed = _load(embed, case["state_dict"])
    with torch.no_grad():
        return {
            "img_to_patch": tu.img_to_patch(x, p),
            "img_to_patch(flatten_channels=False)": tu.img_to_patch(x, p, flatten_channels=False),
            "PatchEmbedding": embed(x),
        }


def run_encoder_layer(tu, case):
    layer = tu.TransformerEncoderLayer(case["embed_dim"], case["num_heads"], case["mlp_ratio"])
    layer = _load(layer, case["state_dict"])
    layer.norm1, layer.norm2 = TorchLayerNorm(layer.norm1), TorchLayerNorm(layer.norm2)
    layer.attn = TorchMultiHeadAttention(layer.attn)
    with torch.no_grad():
        out, attn = layer(case["x"], attn_mask=case["attn_mask"], return_attention=True)
    return {"out": out, "attention": attn}


def run_decoder_layer(tu, case):
    layer = tu.TransformerDecoderLayer(case["embed_dim"], case["num_heads"], case["mlp_ratio"])
    layer = _load(layer, case["state_dict"])
    for name in ("norm1", "norm2", "norm3"):
        setattr(layer, name, TorchLayerNorm(getattr(layer, name)))
    layer.self_attn = TorchMultiHeadAttention(layer.self_attn)
    layer.cross_attn = TorchMultiHeadAttention(layer.cross_attn)
    with torch.no_grad():
        return layer(case["x"], case["memory"], case["self_attn_mask"], case["memory_mask"])


def run_differential_attention(tu, case):
    attn = tu.DifferentialAttention(case["embed_dim"], case["num_heads"], case["layer_idx"])
    attn = _load(attn, case["state_dict"])
    with torch.no_grad():
        out, maps = attn(case["x"], attn_mask=case["attn_mask"], return_attention=True)
    return {"out": out, "attention": maps}


def run_conv2d(tu, case):
    weight, bias = case["weight"], case["bias"]
    C_out, C, kh, kw = weight.shape
    conv = tu.CustomConv2d(
        C, C_out, (kh, kw), case["stride"], case["padding"], bias=bias is not None
    )
    _load(conv, {"weight": weight, "bias": bias} if bias is not None else {"weight": weight})
    x = case["x"].clone().requires_grad_(True)
    out = conv(x)
    out.backward(case["grad_out"])
    result = {"out": out.detach(), "grad_x": x.grad, "grad_weight": conv.weight.grad}
    if bias is not None:
        result["grad_bias"] = conv.bias.grad
    return result


def run_attention_rollout(tu, case):
    rollout, cls_map = tu.attention_rollout(list(case["attentions"]))  # L tensors (B, H, T, T)
    return {"rollout": rollout, "cls_map": cls_map}


def run_vision_transformer(tu, case):
    vit = _load(tu.VisionTransformer(**case["config"]), case["state_dict"])
    # torch's own layers replace the other exercises' modules (same weights).
    vit.patch_embed = TorchPatchEmbedding(vit.patch_embed)
    if vit.pos_embed is not None:
        vit.pos_embed = AddTable(case["pos_table"])
    vit.blocks = nn.ModuleList(TorchEncoderLayer(block) for block in vit.blocks)
    vit.norm = TorchLayerNorm(vit.norm)
    with torch.no_grad():
        logits, attentions = vit(case["x"], return_attention=True)
    return {"logits": logits, "attention": torch.stack(list(attentions))}  # (L, B, H, T, T)


RUNNERS = {
    "self_attention": run_self_attention,
    "layer_norm": run_layer_norm,
    "multi_head_attention": run_multi_head_attention,
    "positional_encoding": run_positional_encoding,
    "patch_embedding": run_patch_embedding,
    "encoder_layer": run_encoder_layer,
    "decoder_layer": run_decoder_layer,
    "differential_attention": run_differential_attention,
    "conv2d": run_conv2d,
    "attention_rollout": run_attention_rollout,
    "vision_transformer": run_vision_transformer,
}


# ---------------------------------------------------------------------------
# Comparing outputs and explaining differences
# ---------------------------------------------------------------------------


def _named_outputs(value):
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
    got, expected = _named_outputs(got), _named_outputs(expected)
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
            got, target = _named_outputs(outputs[i]), _named_outputs(targets[i])
            wrong = _named_outputs(wrong)
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


def _max_error(a, b):
    return (a.detach().float() - b.float()).abs().max().item()


def explain_difference(got, expected, rtol, atol, mistakes=None):
    """Return None if got matches expected, else a message that helps find the bug.

    mistakes: optional dict "description of a known mistake" -> the output
    that mistake produces on the same input (see known_mistake).
    """
    got_named, expected_named = _named_outputs(got), _named_outputs(expected)
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


def _load_pickle(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path, "rb") as f:
        return pickle.load(f)


def _load_cases(file_name):
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


def _student_module():
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
        _max_error(g, e)
        for g, e in zip(_named_outputs(got).values(), _named_outputs(case["target"]).values())
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

    From the assignment file when it is present, else from the role recorded in
    test_data/<id>_grading.pkl (written from the same assignment file).
    """
    path = os.path.join(os.path.dirname(DATA_DIR), "instructor", "assignment.yml")
    if os.path.exists(path):
        import yaml

        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f) or {}
        roles = {i: "practice" for i in spec.get("practice_exercises") or []}
        roles.update({i: "graded" for i in spec.get("student_exercises") or []})
        return roles
    roles = {}
    for info in EXERCISES.values():
        path = os.path.join(DATA_DIR, info["data"].replace(".pkl", "_grading.pkl"))
        role = (_load_pickle(path, {}) or {}).get("role")
        if role in ("graded", "practice"):
            roles[info["id"]] = role
    return roles


def summary_line(outcomes=None):
    """'graded exercises passed n/2, practice passed m/9' (+ how many did not run)."""
    outcomes = OUTCOMES if outcomes is None else outcomes
    roles = exercise_roles()
    parts, not_run = [], 0
    for role, label in (("graded", "graded exercises"), ("practice", "practice")):
        ids = [i for i in EXERCISES if roles.get(i) == role]
        passed = sum(1 for i in ids if outcomes.get(i) is True)
        not_run += sum(1 for i in ids if i not in outcomes)
        parts.append(f"{label} passed {passed}/{len(ids)}")
    line = ", ".join(parts)
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


def exercise_order(test_names):
    """Test method names sorted by exercise number (1.1, 1.2, ..., 1.10, 1.11)."""

    def key(name):
        info = getattr(getattr(TestClass, name, None), "exercise", None)
        number = info["number"] if info else "999"
        return tuple(int(p) if p.isdigit() else 999 for p in number.split(".")), name

    return sorted(test_names, key=key)


def load_tests(loader, tests, pattern):
    """unittest's hook: run the tests in exercise order, not alphabetically."""
    names = exercise_order(loader.getTestCaseNames(TestClass))
    return unittest.TestSuite(TestClass(name) for name in names)


class TestClass(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The test tensors are tiny: one thread is faster than several competing ones.
        cls._num_threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._num_threads)

    def check_exercise(self, exercise_id):
        """Run the exercise on every stored case and compare with the reference outputs."""
        info = EXERCISES[exercise_id]
        cases, mistakes, grading = _load_cases(info["data"])
        default = {"rtol": info["rtol"], "atol": info["atol"], "strict_atol": None, "note": ""}
        tolerances = grading.get("cases") or [default] * len(cases)
        tu = _student_module()
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
            except ForbiddenOpError:
                raise
            except Exception as error:  # your code raised: say where, in your file
                crash = describe_exception(error)
            if not_implemented is not None:
                if "not implemented yet" not in not_implemented:
                    not_implemented = (
                        f"{info['name']} is not implemented yet (exercise {info['number']}): "
                        f"{not_implemented or 'NotImplementedError'}"
                    )
                self.fail(not_implemented)
            if crash is not None:
                self.fail(f"{where}: your code raised an exception:\n{crash}")
            outputs[i] = got
            tol = tolerances[i]
            problem = explain_difference(got, case["target"], tol["rtol"], tol["atol"])
            if problem and first_problem is None:
                first_problem = f"{where}:\n{problem}"
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
            self.fail(first_problem)
        for note in notes:
            warnings.warn(note, PrecisionNote, stacklevel=2)

    @exercise(id="self_attention", number="1.1", points=2, visibility="visible",
              name="SelfAttention", data="self_attention.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_self_attention(self):
        self.check_exercise("self_attention")

    @exercise(id="layer_norm", number="1.2", points=2, visibility="visible",
              name="LayerNorm", data="layer_norm.pkl", rtol=1e-5, atol=1e-6)  # fmt: skip
    def test_layer_norm(self):
        self.check_exercise("layer_norm")

    @exercise(id="multi_head_attention", number="1.3", points=3, visibility="visible",
              name="MultiHeadAttention", data="multi_head_attention.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_multi_head_attention(self):
        self.check_exercise("multi_head_attention")

    @exercise(id="positional_encoding", number="1.4", points=2, visibility="visible",
              name="Positional encodings", data="positional_encoding.pkl", rtol=1e-4, atol=1e-5)  # fmt: skip
    def test_positional_encoding(self):
        self.check_exercise("positional_encoding")

    @exercise(id="patch_embedding", number="1.5", points=1, visibility="visible",
              name="img_to_patch / PatchEmbedding", data="patch_embedding.pkl", rtol=1e-4, atol=1e-5)  # fmt: skip
    def test_patch_embedding(self):
        self.check_exercise("patch_embedding")

    @exercise(id="encoder_layer", number="1.6", points=2, visibility="visible",
              name="TransformerEncoderLayer", data="encoder_layer.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_encoder_layer(self):
        self.check_exercise("encoder_layer")

    @exercise(id="decoder_layer", number="1.7", points=2, visibility="visible",
              name="TransformerDecoderLayer", data="decoder_layer.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_decoder_layer(self):
        self.check_exercise("decoder_layer")

    @exercise(id="differential_attention", number="1.8", points=3, visibility="visible",
              name="DifferentialAttention", data="differential_attention.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_differential_attention(self):
        self.check_exercise("differential_attention")

    @exercise(id="conv2d", number="1.9", points=4, visibility="visible",
              name="Conv2dFunction / CustomConv2d", data="conv2d.pkl", rtol=1e-4, atol=1e-4)  # fmt: skip
    def test_conv2d(self):
        self.check_exercise("conv2d")
        tu = _student_module()
        self._check_conv2d_against_torch(tu)
        self._check_conv2d_gradcheck(tu)
        self._check_conv2d_parameters(tu)

    def _check_conv2d_against_torch(self, tu):
        """Your gradients must equal those of torch's own conv2d on the stored cases."""
        cases, _, _ = _load_cases("conv2d.pkl")
        for i, case in enumerate(cases):
            inp = case["input"]
            x = inp["x"].clone().requires_grad_(True)
            w = inp["weight"].clone().requires_grad_(True)
            b = None if inp["bias"] is None else inp["bias"].clone().requires_grad_(True)
            out = F.conv2d(x, w, b, inp["stride"], inp["padding"])
            out.backward(inp["grad_out"])
            expected = {"out": out.detach(), "grad_x": x.grad, "grad_weight": w.grad}
            if b is not None:
                expected["grad_bias"] = b.grad
            problem = explain_difference(run_conv2d(tu, inp), expected, 1e-4, 1e-4)
            if problem:
                self.fail(f"Conv2dFunction vs torch's conv2d, case {i + 1}: {problem}")

    def _check_conv2d_gradcheck(self, tu):
        """Finite differences in float64: your backward must match your forward."""
        gen = torch.Generator().manual_seed(0)
        for stride, padding, kernel in [(1, 0, (3, 3)), (2, 1, (3, 2)), ((1, 2), (2, 0), (2, 3))]:
            x = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
            w = torch.randn(2, 2, *kernel, generator=gen, dtype=torch.float64, requires_grad=True)
            b = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
            ok = torch.autograd.gradcheck(
                lambda x, w, b, s=stride, p=padding: tu.Conv2dFunction.apply(x, w, b, s, p),
                (x, w, b),
                raise_exception=False,
            )
            self.assertTrue(
                ok,
                f"Conv2dFunction.backward disagrees with finite differences of its forward "
                f"(float64, stride={stride}, padding={padding}, kernel={kernel}): check the "
                "gradient formulas, and that grad_x uses F.fold with the same stride/padding.",
            )

    def _check_conv2d_parameters(self, tu):
        """CustomConv2d must have nn.Conv2d's parameter names and shapes."""
        ours = tu.CustomConv2d(3, 5, (3, 2), stride=2, padding=1).state_dict()
        theirs = nn.Conv2d(3, 5, (3, 2), stride=2, padding=1).state_dict()
        self.assertEqual(
            {k: tuple(v.shape) for k, v in ours.items()},
            {k: tuple(v.shape) for k, v in theirs.items()},
            "CustomConv2d's parameters must be named and shaped as nn.Conv2d's",
        )

    @exercise(id="attention_rollout", number="1.10", points=2, visibility="visible",
              name="attention_rollout", data="attention_rollout.pkl", rtol=1e-4, atol=1e-6)  # fmt: skip
    def test_attention_rollout(self):
        self.check_exercise("attention_rollout")

    @exercise(id="vision_transformer", number="1.11", points=2, visibility="visible",
              name="VisionTransformer", data="vision_transformer.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_vision_transformer(self):
        self.check_exercise("vision_transformer")


if __name__ == "__main__":
    unittest.main()
