"""Kit-level checks of the exercise bank (transformer_utils.py, test_functions.py, test data).

These run the student tests against modified copies of the reference solution:
stubbed exercises, known mistakes and forbidden torch built-ins must each be
reported the way the student tests promise.
"""

import importlib.util
import io
import pickle
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import test_functions  # noqa: E402
from autograder.declarations import read_declarations  # noqa: E402
from instructor import reference_data  # noqa: E402
from instructor.release import find_regions  # noqa: E402

SOURCE = (ROOT / "transformer_utils.py").read_text(encoding="utf-8")
EXERCISE_IDS = list(test_functions.EXERCISES)


def stub_exercise(source, exercise_id):
    """Replace every solution region of one exercise by a bare `raise NotImplementedError`
    (what unfinished student code looks like). Regions are found by the release's parser."""
    lines = source.splitlines(keepends=True)
    regions = [r for r in find_regions(source, "transformer_utils.py") if r.exercise == exercise_id]
    assert regions, f"no solution region for {exercise_id}"
    for r in reversed(regions):
        stub = f'{r.indent}raise NotImplementedError("stub for {exercise_id}")\n'
        lines[r.begin - 1 : r.end] = [stub]
    return "".join(lines)


def edit(source, old, new):
    """Replace one exact snippet of the reference solution (the snippet must exist once)."""
    assert source.count(old) == 1, f"snippet not found exactly once: {old!r}"
    return source.replace(old, new)


def load_module(source, tmp_path):
    path = tmp_path / "transformer_utils.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("transformer_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_student_tests(module, monkeypatch, names=None):
    """Run test_functions.TestClass on `module`; return {test name: (status, message)}."""
    monkeypatch.setitem(sys.modules, "transformer_utils", module)
    loader = unittest.defaultTestLoader
    if names is None:
        suite = loader.loadTestsFromTestCase(test_functions.TestClass)
    else:
        suite = unittest.TestSuite(test_functions.TestClass(name) for name in names)
    outcome = {test._testMethodName: ("pass", "") for test in suite}
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    for test, message in result.failures:
        outcome[test._testMethodName] = ("fail", message)
    for test, message in result.errors:
        outcome[test._testMethodName] = ("error", message)
    return outcome


def method_for(exercise_id):
    return next(
        name
        for name in dir(test_functions.TestClass)
        if getattr(getattr(test_functions.TestClass, name), "exercise", {}).get("id") == exercise_id
    )


# ---------------------------------------------------------------------------
# Markers and declarations
# ---------------------------------------------------------------------------


def test_solution_markers_are_well_formed():
    regions = find_regions(SOURCE, "transformer_utils.py")  # raises on malformed markers
    assert {r.exercise for r in regions} == set(EXERCISE_IDS), "every exercise needs a region"


def test_declarations_are_literals():
    found = read_declarations(ROOT / "test_functions.py")  # ast.literal_eval, no import
    assert (found["self_attention"].number, found["self_attention"].points) == ("1.1", 2)
    assert (found["layer_norm"].number, found["layer_norm"].points) == ("1.2", 2)
    assert set(found) == set(test_functions.RUNNERS) == set(EXERCISE_IDS)
    numbers = [d.number for d in found.values()]
    assert len(set(numbers)) == len(numbers)


# ---------------------------------------------------------------------------
# Reference data
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["public", "hidden"])
def test_reference_data_is_reproducible(split, tmp_path):
    committed = reference_data.OUT_DIRS[split]
    written = reference_data.generate(tmp_path, split)
    assert len(written) == 2 * len(EXERCISE_IDS)
    for path in written:
        name = Path(path).name
        fresh = Path(path).read_bytes()
        assert fresh == (Path(committed) / name).read_bytes(), (
            f"{name} differs from the committed file: run `python -m instructor.reference_data`"
        )
        assert len(fresh) < 512 * 1024, f"{name} is {len(fresh)} bytes"


def test_public_and_hidden_data_differ():
    for exercise_id in EXERCISE_IDS:
        public = (ROOT / "test_data" / f"{exercise_id}.pkl").read_bytes()
        hidden = (ROOT / "autograder" / "reference_data" / f"{exercise_id}.pkl").read_bytes()
        assert public != hidden


def _load(name):
    with open(ROOT / "test_data" / name, "rb") as f:
        return pickle.load(f)


def test_self_attention_data_keeps_the_original_format():
    import torch

    cases = _load("self_attention.pkl")
    assert isinstance(cases, list) and len(cases) == 5
    for case in cases:
        assert set(case) == {"input", "target"}
        assert set(case["input"]) == {"x", "weight"}
        assert case["input"]["x"].shape == (8, 10, 16)
        shapes = {k: tuple(v.shape) for k, v in case["input"]["weight"].items()}
        assert shapes == {
            "W_query.weight": (64, 16),
            "W_query.bias": (64,),
            "W_key.weight": (64, 16),
            "W_key.bias": (64,),
            "W_value.weight": (96, 16),
            "W_value.bias": (96,),
        }
        assert case["target"].shape == (8, 10, 96) and case["target"].dtype == torch.float32


def test_layer_norm_data_keeps_the_original_format():
    import torch

    cases = _load("layer_norm.pkl")
    assert isinstance(cases, list) and len(cases) == 5
    shapes = [tuple(c["input"]["x"].shape) for c in cases]
    assert {(32, 12, 16), (8, 18, 16), (32, 6, 32)} <= set(shapes)
    for case in cases:
        assert set(case) == {"input", "target"} and set(case["input"]) == {"x", "w", "b"}
        C = case["input"]["x"].shape[-1]
        assert case["input"]["w"].shape == case["input"]["b"].shape == (C,)
        assert case["target"].dtype == torch.float32
    # A low-variance case, where an epsilon in the wrong place shows.
    assert min(c["input"]["x"].std().item() for c in cases) < 0.01


# ---------------------------------------------------------------------------
# The student tests
# ---------------------------------------------------------------------------


def test_reference_passes_every_student_test(tmp_path, monkeypatch):
    outcome = run_student_tests(load_module(SOURCE, tmp_path), monkeypatch)
    assert outcome == {method_for(i): ("pass", "") for i in EXERCISE_IDS}


@pytest.mark.parametrize("exercise_id", EXERCISE_IDS)
def test_stubbing_one_exercise_fails_exactly_its_test(exercise_id, tmp_path, monkeypatch):
    module = load_module(stub_exercise(SOURCE, exercise_id), tmp_path)
    outcome = run_student_tests(module, monkeypatch)
    target = method_for(exercise_id)
    status, message = outcome.pop(target)
    assert status == "fail" and "not implemented yet" in message, message
    info = test_functions.EXERCISES[exercise_id]
    assert f"exercise {info['number']}" in message
    broken = {name: result for name, result in outcome.items() if result[0] != "pass"}
    assert not broken, f"stubbing {exercise_id} also broke: {broken}"


def test_every_stored_mistake_is_diagnosed_by_name():
    for exercise_id in EXERCISE_IDS:
        info = test_functions.EXERCISES[exercise_id]
        cases, mistakes = test_functions._load_cases(info["data"])
        seen = set()
        for case, wrong in zip(cases, mistakes):
            for description, output in wrong.items():
                message = test_functions.explain_difference(
                    output, case["target"], info["rtol"], info["atol"], wrong
                )
                assert message, f"{exercise_id}: '{description}' equals the target"
                assert f"known mistake: {description}" in message, (exercise_id, message)
                seen.add(description)
        assert seen, f"{exercise_id} has no known mistakes"


# (exercise id, snippet of the reference solution, wrong replacement, expected diagnosis)
MISTAKES = [
    (
        "layer_norm",
        "var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
        "var = x.var(dim=-1, keepdim=True, unbiased=True)",
        "unbiased variance",
    ),
    (
        "layer_norm",
        "torch.sqrt(var + self.eps)",
        "(torch.sqrt(var) + self.eps)",
        "eps outside the square root",
    ),
    ("layer_norm", "return x_hat * self.w + self.b", "return x_hat", "affine parameters"),
    (
        "layer_norm",
        "mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)\n        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
        "mean = x.mean(dim=1, keepdim=True)\n        var = ((x - mean) ** 2).mean(dim=1, keepdim=True)",
        "wrong normalisation dimension",
    ),
    (
        "self_attention",
        "k.transpose(1, 2)) / math.sqrt(self.query_dim)",
        "k.transpose(1, 2))",
        "not scaled",
    ),
    (
        "self_attention",
        "k.transpose(1, 2)) / math.sqrt(self.query_dim)",
        "k.transpose(1, 2)) / self.query_dim",
        "divided by query_dim instead of sqrt(query_dim)",
    ),
    (
        "self_attention",
        "weights = self.softmax(scores)",
        "weights = scores.softmax(dim=1)",
        "softmax over the wrong dimension",
    ),
    (
        "multi_head_attention",
        'scores = scores.masked_fill(~attn_mask, float("-inf"))\n        attn = scores.softmax',
        'scores = scores.masked_fill(attn_mask, float("-inf"))\n        attn = scores.softmax',
        "inverted mask",
    ),
    (
        "attention_rollout",
        "rollout = a if rollout is None else a @ rollout",
        "rollout = a if rollout is None else rollout @ a",
        "wrong order",
    ),
    (
        "differential_attention",
        "y = y / rms * self.norm_weight * (1 - self.lambda_init)",
        "y = y / rms * self.norm_weight",
        "(1 - lambda_init) output scale is missing",
    ),
    (
        "encoder_layer",
        "x = x + self.mlp(self.norm2(x))  # (B, T, E)\n        if return_attention:\n            return x, attn",
        "x = x + self.mlp(self.norm1(x))\n        if return_attention:\n            return x, attn",
        "norm1 used before the MLP too",
    ),
    (
        "decoder_layer",
        "self.self_attn(h, h, h, attn_mask=self_attn_mask)",
        "self.self_attn(h, h, h)",
        "causal mask is not used",
    ),
    (
        "vision_transformer",
        "logits = self.head(self.norm(tokens)[:, 0])",
        "logits = self.head(tokens[:, 0])",
        "final LayerNorm self.norm is skipped",
    ),
    (
        "positional_encoding",
        "pe[:, 0::2] = torch.sin(angles)\n    pe[:, 1::2] = torch.cos(angles)",
        "pe[:, 0::2] = torch.cos(angles)\n    pe[:, 1::2] = torch.sin(angles)",
        "sine and cosine swapped",
    ),
    (
        "patch_embedding",
        "x = x.permute(0, 2, 4, 1, 3, 5)",
        "x = x.permute(0, 4, 2, 1, 3, 5)",
        "patches listed column by column",
    ),
    (
        "multi_head_attention",
        "out = self.out_proj(out)  # (B, T, E)",
        "out = out",
        "out_proj is not applied",
    ),
    (
        "conv2d",
        "out = weight.reshape(C_out, -1) @ cols",
        "out = weight.flip(-1, -2).reshape(C_out, -1) @ cols",
        "kernel is flipped",
    ),
]


@pytest.mark.parametrize(("exercise_id", "old", "new", "diagnosis"), MISTAKES)
def test_known_mistake_is_named(exercise_id, old, new, diagnosis, tmp_path, monkeypatch):
    module = load_module(edit(SOURCE, old, new), tmp_path)
    name = method_for(exercise_id)
    status, message = run_student_tests(module, monkeypatch, [name])[name]
    assert status == "fail", message
    assert "known mistake" in message and diagnosis in message, message


FORBIDDEN = [
    (
        "layer_norm",
        "mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)",
        "return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)",
        "layer_norm",
    ),
    (
        "self_attention",
        "weights = self.softmax(scores)  # (B, T, T), rows sum to 1",
        "return F.scaled_dot_product_attention(q, k, v)",
        "scaled_dot_product_attention",
    ),
    (
        "conv2d",
        "return Conv2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding)",
        "return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)",
        "conv2d",
    ),
]


@pytest.mark.parametrize(("exercise_id", "anchor", "shortcut", "op"), FORBIDDEN)
def test_forbidden_builtin_is_reported(exercise_id, anchor, shortcut, op, tmp_path, monkeypatch):
    indent = re.search(rf"^([ \t]*){re.escape(anchor)}", SOURCE, re.M).group(1)
    module = load_module(edit(SOURCE, anchor, f"{shortcut}\n{indent}{anchor}"), tmp_path)
    name = method_for(exercise_id)
    status, message = run_student_tests(module, monkeypatch, [name])[name]
    assert status == "fail", message
    assert "ForbiddenOpError" in message and op in message, message
    assert "basic tensor operations" in message


def test_forbidden_ops_allows_basic_ops():
    import torch

    with test_functions.forbidden_ops("layer_norm"):
        x = torch.randn(2, 3, 4)
        (x - x.mean(-1, keepdim=True)).softmax(-1)
    with pytest.raises(test_functions.ForbiddenOpError, match="layer_norm"):
        with test_functions.forbidden_ops("layer_norm"):
            torch.nn.LayerNorm(4)(x)


def test_handout_commands_work():
    for command in (
        [sys.executable, "-m", "unittest", "test_functions.TestClass.test_self_attention", "-v"],
        [sys.executable, "-m", "unittest", "test_functions.TestClass.test_layer_norm", "-v"],
    ):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "OK" in result.stderr, result.stderr


@pytest.mark.parametrize("pos_embedding", ["none", "learned1d", "learned2d", "sinusoidal"])
def test_vision_transformer_trains_and_rolls_out(pos_embedding):
    import torch

    import transformer_utils as tu

    torch.manual_seed(0)
    vit = tu.VisionTransformer(embed_dim=32, depth=2, num_heads=2, pos_embedding=pos_embedding)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD(vit.parameters(), lr=0.1)
    logits, attentions = vit(x, return_attention=True)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    assert logits.shape == (4, 10) and torch.isfinite(loss)
    assert all(p.grad is not None for p in vit.parameters()), "a parameter gets no gradient"
    T = vit.patch_embed.num_patches + 1
    assert len(attentions) == 2 and attentions[0].shape == (4, 2, T, T)
    rollout, cls_map = tu.attention_rollout(attentions)
    assert rollout.shape == (4, T, T) and cls_map.shape == (4, T - 1)
    assert torch.allclose(rollout.sum(-1), torch.ones(4, T), atol=1e-5)
    with pytest.raises(ValueError, match="pos_embedding"):
        tu.VisionTransformer(pos_embedding="learned3d")
