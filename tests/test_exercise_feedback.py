"""What a student is told when a practice exercise fails: a named mistake, else what is off,
else (for code that raises) the student's line and the probable cause.

Each planted slip below is a one-line edit of the reference solution, the way students
write it; the student test (test_functions.py) runs on it in this process. The helpers are
those of test_exercise_bank.py.
"""

import pickle
import re

import pytest
import torch
from test_exercise_bank import SOURCE, edit, load_module, method_for, run_student_tests

from kit.exercise_checks import compare, crashes, diagnosis, harness

PRACTICE = [i for i, role in harness.exercise_roles().items() if role == "practice"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _message(source, exercise_id, tmp_path, monkeypatch):
    name = method_for(exercise_id)
    return run_student_tests(load_module(source, tmp_path), monkeypatch, [name])[name]


def _edits(*pairs):
    source = SOURCE
    for old, new in pairs:
        source = edit(source, old, new)
    return source


# ---------------------------------------------------------------------------
# The catalogue: at least five named mistakes per practice exercise
# ---------------------------------------------------------------------------


def _descriptions(folder, exercise_id):
    with open(f"{folder}/{exercise_id}_mistakes.pkl", "rb") as f:
        return {d for per_case in pickle.load(f) for d in per_case}


# The practice exercises this catalogue and the rewrites below were written for; an exercise
# added later must still name five mistakes (the test below reads the course's roles).
NINE = ["multi_head_attention", "positional_encoding", "patch_embedding", "encoder_layer",
        "decoder_layer", "differential_attention", "conv2d", "attention_rollout",
        "vision_transformer"]  # fmt: skip


def test_the_nine_are_practice_in_the_default_course():
    assert set(NINE) <= set(PRACTICE) and "self_attention" not in PRACTICE


@pytest.mark.parametrize("exercise_id", PRACTICE)
def test_every_practice_exercise_names_at_least_five_mistakes(exercise_id):
    for folder in (harness.DATA_DIR, f"{harness.KIT_ROOT}/autograder/reference_data"):
        found = _descriptions(folder, exercise_id)
        assert len(found) >= 5, f"{exercise_id} in {folder}: {sorted(found)}"


@pytest.mark.parametrize("exercise_id", PRACTICE)
def test_a_stored_mistake_is_named_only_within_its_tolerance_band(exercise_id):
    """Halfway between the target and a mistake is wrong, but not that mistake: nothing is
    named (the mistake itself is; test_exercise_bank checks that)."""
    cases, mistakes, grading = harness.load_cases(harness.EXERCISES[exercise_id]["data"])
    for case, wrong, tol in zip(cases, mistakes, grading["cases"]):
        pair = (tol["rtol"], tol["atol"])
        for description, output in wrong.items():
            target, mistake = compare.named_outputs(case["target"]), compare.named_outputs(output)
            half = {k: (t + mistake.get(k, t)) / 2 for k, t in target.items()}
            assert compare.known_mistake([half], [case["target"]], [wrong], [pair]) is None, (
                exercise_id,
                description,
            )
            assert compare.known_mistake([output], [case["target"]], [wrong], [pair]) == (
                description
            )


# (exercise id, edits of the reference solution, the mistake named)
PLANTED = [
    ("multi_head_attention",
     [('            scores = scores.masked_fill(~attn_mask, float("-inf"))\n        attn = scores.softmax(dim=-1)  # (B, H, T, S)',
       '        attn = scores.softmax(dim=-1)  # (B, H, T, S)\n        if attn_mask is not None:\n            attn = attn.masked_fill(~attn_mask, 0.0)')],
     "the mask is applied after the softmax"),
    ("multi_head_attention",
     [("out = out.transpose(1, 2).reshape(B, T, E)  # (B, T, E), heads", "out = out.reshape(B, T, E)  # heads")],
     "heads merged without moving the head dim back"),
    ("positional_encoding",
     [("two_i = torch.arange(0, dim, 2, dtype=torch.float32)", "two_i = torch.arange(0, dim // 2, dtype=torch.float32)")],
     "the exponent uses i instead of 2i"),
    ("positional_encoding",
     [("position = torch.arange(num_positions, dtype=torch.float32)", "position = torch.arange(1, num_positions + 1, dtype=torch.float32)")],
     "positions counted from 1"),
    ("patch_embedding", [("x = x.permute(0, 2, 4, 1, 3, 5)", "x = x.permute(0, 2, 4, 1, 5, 3)")],
     "rows and columns swapped inside each patch"),
    ("patch_embedding",
     [("x = x.reshape(B, C, H // p, p, W // p, p)", "x = x.reshape(B, C, p, H // p, p, W // p)"),
      ("x = x.permute(0, 2, 4, 1, 3, 5)", "x = x.permute(0, 3, 5, 1, 2, 4)")],
     "each side split as (p, H/p)"),
    ("encoder_layer",
     [("x = x + self.mlp(self.norm2(x))  # (B, T, E)\n        if return_attention",
       "x = x + self.mlp(self.norm2(h))\n        if return_attention")],
     "the MLP reads the attention output"),
    ("encoder_layer",
     [("x = x + self.mlp(self.norm2(x))  # (B, T, E)\n        if return_attention",
       "x = self.mlp(self.norm2(x))\n        if return_attention")],
     "the MLP branch has no residual"),
    ("decoder_layer", [("h = self.norm2(x)  # (B, T, E)", "h = self.norm1(x)")], "norm1 reused before the cross-attention"),
    ("decoder_layer", [("self.cross_attn(h, memory, memory, attn_mask=memory_mask)", "self.cross_attn(h, memory, memory)")],
     "the memory mask is not passed"),
    ("conv2d", [("(g @ cols.transpose(1, 2)).sum(dim=0)", "(cols @ g.transpose(1, 2)).sum(dim=0)")],
     "grad_weight reshaped from a (C*kh*kw, C_out) product"),
    ("conv2d", [("grad_cols = weight.reshape(C_out, -1).t() @ g", "grad_cols = weight.reshape(-1, C_out) @ g")],
     "the weight matrix is reshaped to (C*kh*kw, C_out)"),
    ("attention_rollout", [("a = attn.mean(dim=1)", "a = attn.sum(dim=1)")], "the identity weighs too little against the heads"),
    ("attention_rollout", [("a = a / a.sum(dim=-1, keepdim=True)", "a = a / a.sum(dim=-2, keepdim=True)")],
     "renormalised over the columns"),
    ("vision_transformer", [('else tokens[:, 0]  # (B, E)', 'else tokens[:, 1]')], "the head reads token 1"),
]  # fmt: skip


@pytest.mark.parametrize(("exercise_id", "edits", "named"), PLANTED,
                         ids=[f"{p[0]}-{i}" for i, p in enumerate(PLANTED)])  # fmt: skip
def test_a_planted_practice_mistake_is_named(exercise_id, edits, named, tmp_path, monkeypatch):
    status, message = _message(_edits(*edits), exercise_id, tmp_path, monkeypatch)
    assert status == "fail", message
    assert f"known mistake: {named}" in message, message
    assert "What is off" not in message, message  # a named cause needs no other diagnosis


# Correct answers written other ways: they pass, and no mistake is named for them.
CORRECT = [
    ("multi_head_attention",
     [("scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)", 'scores = torch.einsum("bhtd,bhsd->bhts", q, k) * D**-0.5'),
      ('scores.masked_fill(~attn_mask, float("-inf"))\n        attn = scores', "scores.masked_fill(attn_mask.logical_not(), -1e9)\n        attn = scores"),
      ("out = out.transpose(1, 2).reshape(B, T, E)", "out = out.permute(0, 2, 1, 3).flatten(2)")]),
    ("positional_encoding",
     [("pe = torch.zeros(num_positions, dim)\n    pe[:, 0::2] = torch.sin(angles)\n    pe[:, 1::2] = torch.cos(angles)",
       "pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(num_positions, dim)")]),
    ("patch_embedding",
     [("x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)\n    x = x.permute(0, 2, 4, 1, 3, 5)",
       "x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5)")]),
    ("encoder_layer",
     [("h = self.norm1(x)  # (B, T, E)\n        h, attn = self.attn(h, h, h, attn_mask=attn_mask, return_attention=True)",
       "n = self.norm1(x)\n        h, attn = self.attn(n, n, n, attn_mask, True)")]),
    ("decoder_layer",
     [("x = x + self.mlp(self.norm3(x))  # (B, T, E)\n        return x", "return x + self.mlp(self.norm3(x))")]),
    ("differential_attention",
     [("lam1 = torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))", "lam1 = (self.lambda_q1 * self.lambda_k1).sum().exp()"),
      ("rms = torch.sqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)", "rms = 1 / torch.rsqrt((y * y).mean(-1, keepdim=True) + self.eps)")]),
    ("conv2d",
     [("(g @ cols.transpose(1, 2)).sum(dim=0).reshape(C_out, C, kh, kw)", 'torch.einsum("bol,bkl->ok", g, cols).reshape(C_out, C, kh, kw)'),
      ("grad_cols = weight.reshape(C_out, -1).t() @ g", 'grad_cols = torch.einsum("ok,bol->bkl", weight.reshape(C_out, -1), g)')]),
    ("attention_rollout",
     [("rollout = a if rollout is None else a @ rollout", "rollout = a if rollout is None else torch.bmm(a, rollout)"),
      ("a = a / a.sum(dim=-1, keepdim=True)", "a = a / (a.sum(dim=-1)[..., None])")]),
    ("vision_transformer",
     [("cls = self.cls_token.expand(tokens.shape[0], -1, -1)", "cls = self.cls_token.repeat(tokens.shape[0], 1, 1)")]),
]  # fmt: skip


@pytest.mark.parametrize(("exercise_id", "edits"), CORRECT, ids=[c[0] for c in CORRECT])
def test_a_correct_practice_answer_passes_and_is_named_nothing(
    exercise_id, edits, tmp_path, monkeypatch
):
    status, message = _message(_edits(*edits), exercise_id, tmp_path, monkeypatch)
    assert (status, message) == ("pass", "")


def test_each_of_the_nine_has_a_correct_rewrite_here():
    assert {c[0] for c in CORRECT} == set(NINE)


# ---------------------------------------------------------------------------
# The diagnosis, when no known mistake matches
# ---------------------------------------------------------------------------

# Slips that match no known mistake, and what the message must say instead.
UNKNOWN = [
    ("multi_head_attention",
     [('scores.masked_fill(~attn_mask, float("-inf"))\n        attn = scores', "scores.masked_fill(~attn_mask, 0.0)\n        attn = scores")],
     ["gives weight (up to", "must get exactly 0", "right when the mask is all True (nothing blocked)",
      "right for the case(s) with no mask, num_heads=2 / num_heads=3; wrong for those with a (T, S) mask"]),
    ("positional_encoding",
     [("torch.exp(-math.log(10000.0) * two_i / dim)", "torch.exp(-math.log(1000.0) * two_i / dim)")],
     ["'sinusoidal_encoding_1d': the first position is right and every later one is off",
      "right: LearnedPositionalEncoding1D, LearnedPositionalEncoding2D; wrong:"]),
    ("patch_embedding", [("return self.proj(patches)  # (B, N, E)", "return patches @ self.proj.weight.t()")],
     ["right: img_to_patch, img_to_patch(flatten_channels=False); wrong: PatchEmbedding",
      "'PatchEmbedding' is off by an amount that depends only on the channel"]),
    ("encoder_layer", [("x = x + self.mlp(self.norm2(x))  # (B, T, E)", "x = x + self.mlp(x)")],
     ["right: attention; wrong: out", "look at what follows it"]),
    ("differential_attention",
     [('scores = scores.masked_fill(~attn_mask, float("-inf"))\n        maps', 'scores = scores.masked_fill(~attn_mask, -1.0)\n        maps')],
     ["right for the queries whose mask row is all True",
      "right for the case(s) with no mask, layer_idx=1, num_heads=2; wrong for those with a causal mask"]),
    ("conv2d",
     [("grad_x = F.fold(grad_cols, x_shape[2:], (kh, kw), padding=padding, stride=stride)",
       "H, W = x_shape[2:]\n        grad_x = F.fold(grad_cols, (H + 2 * padding[0], W + 2 * padding[1]), (kh, kw), "
       "stride=stride)[..., :H, :W]")],
     ["right: out, grad_weight, grad_bias; wrong: grad_x", "your forward is right; the backward's grad_x is off",
      "stride=1, padding=0: right; stride=2, padding=0: right; stride=1, padding=1: wrong grad_x",
      "right for the case(s) with stride=1, padding=0; wrong for those with stride=(1, 2) / stride=2"]),
    ("attention_rollout", [("return rollout, rollout[:, 0, 1:]", "return rollout, rollout[:, 0, :-1]")],
     ["right: rollout; wrong: cls_map", "look at how the CLS map is read"]),
    ("differential_attention", [("lam = lam1 - lam2 + self.lambda_init", "lam = lam1 + lam2 + self.lambda_init")],
     ["rows of 'attention' sum to -0.733; the expected rows all sum to 0.862",
      "your lambda works out to 1.73, the expected one to 0.138"]),
    ("decoder_layer", [("x = x + self.mlp(self.norm3(x))  # (B, T, E)", "x = x + self.mlp(self.norm2(x))")],
     ["'output' is off everywhere (no position and no channel is right)"]),
    ("vision_transformer", [("tokens = self.norm(tokens)  # (B, T, E)", "tokens = self.norm(tokens) * 2")],
     ["right: attention; wrong: logits", "look after the blocks"]),
    ("layer_norm", [("return x_hat * self.w + self.b", "return x_hat * self.w")],
     ["'output' is off by an amount that depends only on the channel (the same at every other "
      "index): an offset per channel"]),
]  # fmt: skip


@pytest.mark.parametrize(("exercise_id", "edits", "says"), UNKNOWN,
                         ids=[f"{u[0]}-{i}" for i, u in enumerate(UNKNOWN)])  # fmt: skip
def test_an_unknown_slip_is_located(exercise_id, edits, says, tmp_path, monkeypatch):
    status, message = _message(_edits(*edits), exercise_id, tmp_path, monkeypatch)
    assert status == "fail" and "known mistake" not in message, message
    assert "What is off (measured against the reference):" in message, message
    for words in says:
        assert words in message, (words, message)


def _case(exercise_id, index=0):
    cases, mistakes, grading = harness.load_cases(harness.EXERCISES[exercise_id]["data"])
    tolerances = [(t["rtol"], t["atol"]) for t in grading["cases"]]
    return cases, mistakes, tolerances


def _diagnose(exercise_id, outputs, index=0):
    cases, _, tolerances = _case(exercise_id)
    inputs, targets = [c["input"] for c in cases], [c["target"] for c in cases]
    return diagnosis.diagnose(exercise_id, index, inputs, outputs, targets, tolerances)


def _targets(exercise_id):
    cases, _, _ = _case(exercise_id)
    return [{k: v.clone() for k, v in compare.named_outputs(c["target"]).items()} for c in cases]


def test_diagnosis_decoder_layer_names_the_positions_that_are_off():
    outputs = _targets("decoder_layer")
    outputs[0]["output"][:, -1] += 0.5  # only the last position
    lines = _diagnose("decoder_layer", outputs)
    assert "'output': only the last position is off; the others are right" in lines, lines


def test_diagnosis_differential_attention_names_the_head_that_is_off():
    outputs = _targets("differential_attention")
    outputs[0]["attention"][:, 1] *= 0.5  # head 1 of 2
    outputs[0]["out"] += 1.0
    lines = _diagnose("differential_attention", outputs)
    assert "'attention': only the last head is off; the others are right" in lines, lines
    assert "'out' is the expected output plus a constant 1" in lines, lines


def test_diagnosis_vision_transformer_names_the_layer_and_the_factor():
    outputs = _targets("vision_transformer")
    outputs[0]["attention"][1] = outputs[0]["attention"][1].transpose(-1, -2).contiguous()
    outputs[0]["logits"] *= 2.0
    lines = _diagnose("vision_transformer", outputs)
    assert "'logits' is 2 times the expected output everywhere (a constant factor)" in lines, lines
    assert "'attention': only the last layer is off; the others are right" in lines, lines


def test_diagnosis_multi_head_attention_sees_rows_that_do_not_sum_to_one():
    cases, mistakes, _ = _case("multi_head_attention")
    i = next(i for i, m in enumerate(mistakes) if any("after the softmax" in d for d in m))
    wrong = next(v for d, v in mistakes[i].items() if "after the softmax" in d)
    outputs = _targets("multi_head_attention")
    outputs[i] = wrong
    lines = _diagnose("multi_head_attention", outputs, index=i)
    assert any(re.match(r"rows of 'attention' sum to between [\d.e-]+ and [\d.]+, not 1", s)
               for s in lines), lines  # fmt: skip


def test_diagnosis_patch_embedding_sees_right_numbers_in_wrong_places():
    outputs = _targets("patch_embedding")
    for key in outputs[0]:
        outputs[0][key] = outputs[0][key].flip(1)  # patches in reverse order
    lines = _diagnose("patch_embedding", outputs)
    assert "'img_to_patch' holds the right numbers in the wrong places" in " ".join(lines), lines


def test_diagnosis_attention_rollout_sees_columns_that_sum_to_one():
    outputs = _targets("attention_rollout")
    r = outputs[0]["rollout"]
    outputs[0]["rollout"] = r / r.sum(-2, keepdim=True)
    lines = _diagnose("attention_rollout", outputs)
    assert any("your columns sum to 1" in s for s in lines), lines


def test_diagnosis_encoder_layer_says_which_cases_pass():
    outputs = _targets("encoder_layer")
    outputs[1]["out"] = outputs[1]["out"] * 0 + torch.linspace(
        0, 1, outputs[1]["out"].numel()
    ).view_as(outputs[1]["out"])
    lines = _diagnose("encoder_layer", outputs, index=1)
    assert (
        "right for the case(s) with no mask, num_heads=2; wrong for those with a (T, S) mask, "
        "num_heads=4 (any of these may matter)" in lines
    ), lines


def test_diagnosis_conv2d_says_which_stride_is_wrong():
    outputs = _targets("conv2d")
    outputs[1]["out"] = -outputs[1]["out"]  # case 2 only: stride 2
    lines = _diagnose("conv2d", outputs, index=1)
    assert "'out' is the expected output with its sign flipped" in lines, lines
    assert "right: grad_x, grad_weight, grad_bias; wrong: out" in lines, lines
    assert (
        "right for the case(s) with stride=(1, 2) / stride=1, padding=(1, 0) / padding=0; "
        "wrong for those with stride=2, padding=1 (any of these may matter)" in lines
    ), lines


def test_diagnosis_positional_encoding_says_which_columns():
    outputs = _targets("positional_encoding")
    outputs[0]["sinusoidal_encoding_1d"][:, 4] += 1.0
    lines = _diagnose("positional_encoding", outputs)
    assert "'sinusoidal_encoding_1d' is the expected output plus a constant" not in " ".join(lines)
    assert "right: sinusoidal_encoding_2d" in lines[0], lines
    assert any("column 4 off, 0-3, 5-15 right" in s for s in lines), lines


def test_diagnosis_of_a_right_answer_is_empty_and_a_broken_one_never_raises():
    outputs = _targets("multi_head_attention")
    assert _diagnose("multi_head_attention", outputs) == []
    assert _diagnose("multi_head_attention", [None, None, None, None]) == []


def test_describe_split():
    assert diagnosis.describe_split("position", [False, True, True]) == (
        "the first position is right and every later one is off"
    )
    assert diagnosis.describe_split("head", [False, False]) is None
    assert diagnosis.describe_split("row", [True, False, True, True, False]) == (
        "row 0, 2-3 off, 1, 4 right (counting from 0)"
    )


# ---------------------------------------------------------------------------
# Crashes point at the student's line
# ---------------------------------------------------------------------------

# (exercise id, edits that make it raise, where, what the message must say)
CRASHES = [
    ("conv2d",
     [("H_out = (H + 2 * padding[0] - kh) // stride[0] + 1", "H_out = (H - kh) // stride[0] + 1"),
      ("W_out = (W + 2 * padding[1] - kw) // stride[1] + 1", "W_out = (W - kw) // stride[1] + 1"),
      ("cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)", "cols = F.unfold(x, (kh, kw), stride=stride)")],
     "case 2 of 3 [x (2, 2, 7, 9), weight (3, 2, 3, 2), bias (3,), stride=2, padding=1",
     ["Mismatch in shape", "Probable cause: your forward returned an output of shape (2, 3, 3, 4), but this case needs (2, 3, 4, 5)",
      "H_out = (H + 2 * padding - k) // stride + 1 = (7 + 2 * 1 - 3) // 2 + 1 = 4, yours is 3: that is the size without the padding",
      "(torch raised later, on the output this line returned)"], "return out.reshape(B, C_out, H_out, W_out)"),
    ("conv2d", [("return grad_x, grad_w, grad_b, None, None", "return grad_x, grad_w.reshape(C_out, -1), grad_b, None, None")],
     "case 1 of 3", ["backward returned grad_weight (the shape of weight) with shape (4, 27); it must be (4, 3, 3, 3)"],
     "return grad_x, grad_w.reshape(C_out, -1), grad_b, None, None"),
    ("conv2d", [("grad_cols = weight.reshape(C_out, -1).t() @ g", "grad_cols = weight.reshape(C_out, -1) @ g")],
     "case 1 of 3", ["Probable cause: a matrix product (A @ B) needs A's last size to equal B's first: here 4 vs 27"],
     "grad_cols = weight.reshape(C_out, -1) @ g"),
    ("conv2d", [("cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)", "cols = F.unfold(x, (kh, kw), padding=padding)")],
     "case 2 of 3", ["your product has 70 columns per image and channel; H_out * W_out = 20: that is the count "
                     "with stride 1 (pass stride= to F.unfold)"], "return out.reshape(B, C_out, H_out, W_out)"),
    ("conv2d", [("grad_x = F.fold(grad_cols, x_shape[2:], (kh, kw), padding=padding, stride=stride)",
                 "grad_x = F.fold(grad_cols, x_shape[2:], (kh, kw), stride=stride)")],
     "case 2 of 3", ["F.fold with these arguments expects 12 columns, yours has 20",
                     "you fold with padding=(0, 0); this case has padding=1"], "grad_x = F.fold(grad_cols"),
    ("patch_embedding", [("return self.proj(patches)  # (B, N, E)", "return self.proj(patches.double())")],
     "case 1 of 2", ["Probable cause: two dtypes met (Double and Float)"], "return self.proj(patches.double())"),
    ("multi_head_attention", [("scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)",
                               "scores = F.scaled_dot_product_attention(q, k, v)")],
     "case 1 of 4 [embed_dim=16, num_heads=2, query (2, 5, 16)",
     ["ForbiddenOpError", "scaled_dot_product_attention", "basic tensor operations",
      "Probable cause: the line below calls torch's own version"],
     "scores = F.scaled_dot_product_attention(q, k, v)"),
    ("differential_attention", [("y = attn @ v  # (B, H, T, 2D)", "y = attn @ v.transpose(-2, -1)")],
     "case 1 of 2", ["Probable cause: a batched matrix product (A @ B)", "or another reshape"], "y = attn @ v.transpose(-2, -1)"),
]  # fmt: skip


@pytest.mark.parametrize(("exercise_id", "edits", "where", "says", "line"), CRASHES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CRASHES)])  # fmt: skip
def test_a_crash_names_the_case_the_line_and_the_probable_cause(
    exercise_id, edits, where, says, line, tmp_path, monkeypatch
):
    source = _edits(*edits)
    status, message = _message(source, exercise_id, tmp_path, monkeypatch)
    assert status == "fail" and "your code raised an exception" in message, message
    assert where in message, message
    for words in says:
        assert words in message, (words, message)
    found = re.findall(r"at transformer_utils\.py:(\d+) in (\w+):  (.*)", message)
    assert found, message
    number, _, text = found[-1]  # the failing line last
    assert source.splitlines()[int(number) - 1].strip() == text.strip() and line in text, message


def test_probable_causes_never_guess_on_an_unknown_error():
    assert crashes.probable_causes("conv2d", ValueError("something else")) == (None, [])


def test_a_crash_without_a_frame_of_the_student_says_so():
    text = crashes.explain_crash("layer_norm", RuntimeError("boom"))
    assert (
        text.startswith("RuntimeError: boom") and "not raised inside transformer_utils.py" in text
    )


# ---------------------------------------------------------------------------
# The grader says where time went
# ---------------------------------------------------------------------------


def _stack_of_a_hung_import(tmp_path, source):
    """Import ``source`` as transformer_utils in a child Python whose faulthandler dumps its
    stack after 1 s and exits (what the sandbox's supervisor asks for before its kill)."""
    import subprocess
    import sys

    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "transformer_utils.py").write_text(source, encoding="utf-8")
    child = (
        "import faulthandler, sys\n"
        f"stack = open({str(tmp_path / 'stack.txt')!r}, 'w')\n"
        "faulthandler.dump_traceback_later(1.0, exit=True, file=stack)\n"
        f"sys.path.insert(0, {str(tmp_path / 'student')!r})\n"
        "import transformer_utils\n"
    )
    subprocess.run([sys.executable, "-c", child], timeout=60, check=False)
    return (tmp_path / "stack.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "stage", ["importing transformer_utils.py", "running case 1 of 5 [x (8,)]"]
)
def test_a_time_out_while_importing_says_so_and_names_the_line(stage, tmp_path):
    from autograder import grade

    source = "import math\n_spins = 0\nwhile True:\n    _spins += 1\n"
    assert "transformer_utils.py" in _stack_of_a_hung_import(tmp_path, source)
    (tmp_path / "stage.txt").write_text(stage, encoding="utf-8")
    message = grade._timed_out(tmp_path, {"timeout_s": 1.0}, source)
    # the stack shows the module's top level, whatever the stage file says
    assert "Timed out after 1 s wall-clock while importing transformer_utils.py" in message
    assert "runs when the grader imports it" in message, message
    assert re.search(
        r"It was running transformer_utils\.py:[34] in <module>:  (while True:|_spins \+= 1)",
        message,
    ), message


def test_a_time_out_in_an_exercise_gets_no_import_advice(tmp_path):
    from autograder import grade

    (tmp_path / "stage.txt").write_text("running case 2 of 5 [x (8,)]", encoding="utf-8")
    (tmp_path / "stack.txt").write_text(
        "Current thread 0x1 (most recent call first):\n"
        '  File "/box/transformer_utils.py", line 2 in forward\n',
        encoding="utf-8",
    )
    message = grade._timed_out(
        tmp_path, {"timeout_s": 3.0}, "def forward():\n    while True: pass\n"
    )
    assert "while running case 2 of 5" in message and "imports it" not in message, message
    assert "It was running transformer_utils.py:2 in forward:  while True: pass" in message


def test_diagnosis_says_an_output_is_all_zeros():
    outputs = _targets("decoder_layer")
    outputs[0]["output"] = torch.zeros_like(outputs[0]["output"])
    assert _diagnose("decoder_layer", outputs)[0] == "'output' is all zeros"
