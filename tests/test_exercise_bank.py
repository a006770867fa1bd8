"""Kit-level checks of the exercise bank (transformer_utils.py, test_functions.py, test data).

These run the student tests against modified copies of the reference solution:
stubbed exercises, known mistakes and forbidden torch built-ins must each be
reported the way the student tests promise.

The fast tier runs the student tests in this process (with one torch thread, as
test_functions.py's setUpClass does); the slow tier also runs the handout's commands in
subprocesses, stubs each exercise alone and regenerates all the reference data.
"""

import copy
import importlib.util
import io
import pickle
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

import test_functions
from autograder.declarations import read_declarations
from instructor import reference_data
from instructor.release import find_regions
from kit.exercise_checks import compare, forbidden, harness, runners

ROOT = Path(__file__).resolve().parents[1]

SOURCE = (ROOT / "transformer_utils.py").read_text(encoding="utf-8")
EXERCISE_IDS = list(harness.EXERCISES)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test tensors are tiny: one thread is much faster than several competing ones (as
    in test_functions.TestClass.setUpClass, which a single TestCase.run does not call)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def stub_exercise(source, *exercise_ids):
    """Replace every solution region of these exercises by a bare `raise NotImplementedError`
    (what unfinished student code looks like). Regions are found by the release's parser."""
    lines = source.splitlines(keepends=True)
    regions = find_regions(source, "transformer_utils.py")
    for exercise_id in exercise_ids:
        assert any(r.exercise == exercise_id for r in regions), f"no region for {exercise_id}"
    for r in sorted(regions, key=lambda r: r.begin, reverse=True):
        if r.exercise in exercise_ids:
            stub = f'{r.indent}raise NotImplementedError("stub for {r.exercise}")\n'
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
    # these runs test modified copies: keep them out of the summary line printed at exit
    monkeypatch.setattr(harness, "OUTCOMES", {})
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
    assert set(found) == set(runners.RUNNERS) == set(EXERCISE_IDS)
    numbers = [d.number for d in found.values()]
    assert len(set(numbers)) == len(numbers)


# ---------------------------------------------------------------------------
# Reference data
# ---------------------------------------------------------------------------


def _load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


SCALE_RTOL = 3e-5  # of a tensor's largest |value|: rounding of another CPU, not a change


def differences(fresh, committed, where="", rtol=1e-5, atol=1e-6):
    """Where two reference-data objects differ by value (tensors: within rtol/atol or
    SCALE_RTOL of their scale, the rest exactly); the measured errors in the grading records
    and the tolerances derived from them only within SPREAD_FACTOR, since they are the
    rounding errors of the torch and the CPU that ran the generator."""
    import torch

    if isinstance(committed, torch.Tensor):
        if not isinstance(fresh, torch.Tensor):
            return [f"{where}: a tensor became {type(fresh).__name__}"]
        if fresh.dtype != committed.dtype or fresh.shape != committed.shape:
            return [f"{where}: {fresh.dtype} {tuple(fresh.shape)} vs {committed.dtype} "
                    f"{tuple(committed.shape)}"]  # fmt: skip
        if fresh.dtype == torch.bool or not fresh.is_floating_point():
            return [] if torch.equal(fresh, committed) else [f"{where}: values differ"]
        if torch.allclose(fresh, committed, rtol=rtol, atol=atol, equal_nan=True):
            return []
        # Another CPU's float32 kernels sum in another order (seen: AVX-512 against the
        # generating machine), and a softmax magnifies that for small entries next to large
        # ones: up to 7.5e-6 of the tensor's largest value. Against that scale, 3e-5 still
        # sees a target changed by 1e-4 (test_a_changed_generator_fails_...).
        error = (fresh - committed).abs().max().item()
        if error <= SCALE_RTOL * committed.abs().max().item():
            return []
        return [f"{where}: max difference {error:.3g}"]
    if isinstance(committed, dict):
        if not isinstance(fresh, dict) or list(fresh) != list(committed):
            return [f"{where}: keys {list(committed)} became {list(fresh)[:20]}"]
        found = []
        for key in committed:
            if key == "spread":  # measured rounding errors: same order of magnitude
                found += _spread_differences(fresh[key], committed[key], f"{where}/spread")
            elif key in MEASURED_TOLERANCES and _within_factor(fresh[key], committed[key]):
                continue  # derived from this machine's rounding (SAFETY_FACTOR x the need)
            else:
                found += differences(fresh[key], committed[key], f"{where}/{key}", rtol, atol)
        return found
    if isinstance(committed, (list, tuple)):
        if type(fresh) is not type(committed) or len(fresh) != len(committed):
            return [f"{where}: a {type(committed).__name__} of {len(committed)} changed"]
        return [d for i, (a, b) in enumerate(zip(fresh, committed))
                for d in differences(a, b, f"{where}[{i}]", rtol, atol)]  # fmt: skip
    return [] if fresh == committed else [f"{where}: {committed!r} became {fresh!r}"]


# A grading tolerance is SAFETY_FACTOR x the error the correct answers need ON THE MACHINE
# THAT RUNS THE GENERATOR, and another CPU rounds differently (seen: an AVX-512 Xeon made one
# atol 2e-05 where the committed data has 1e-05, a spread 5.7x smaller): such numbers must
# agree within SPREAD_FACTOR, the rest exactly. tests/test_correct_variants.py checks what
# matters on every machine: each correct answer passes the committed tolerances.
MEASURED_TOLERANCES = ("atol", "strict_atol")
SPREAD_FACTOR = 8


def _within_factor(fresh, committed):
    if not isinstance(fresh, float) or not isinstance(committed, float):
        return False
    return committed / SPREAD_FACTOR <= fresh <= committed * SPREAD_FACTOR


def _spread_differences(fresh, committed, where):
    if list(fresh) != list(committed):
        return [f"{where}: variants {list(committed)} became {list(fresh)}"]
    return [
        f"{where}/{name}/{k}: {committed[name][k]:.2g} became {fresh[name][k]:.2g}"
        for name in committed
        for k in committed[name]
        if not _within_factor(fresh[name][k], committed[name][k])
    ]


@pytest.mark.parametrize(
    "split, exercises",
    [
        pytest.param("public", ["layer_norm"], id="public-layer_norm", marks=pytest.mark.slow),
        pytest.param("hidden", ["layer_norm"], id="hidden-layer_norm"),
        pytest.param("public", None, id="public", marks=pytest.mark.slow),
        pytest.param("hidden", None, id="hidden", marks=pytest.mark.slow),
    ],
)
def test_reference_data_is_reproducible(split, exercises, tmp_path):
    """Regenerated data equals the committed data by value (not byte for byte: another torch
    may round the last bit differently and pickles the same numbers in other bytes).
    The fast tier regenerates the hidden data of one graded exercise (cases, mistakes, and
    tolerances measured on its corpus of correct answers); the slow tier all the data."""
    committed = Path(reference_data.OUT_DIRS[split])
    written = reference_data.generate(tmp_path, split, exercises=exercises)
    assert len(written) == 3 * len(exercises or EXERCISE_IDS)
    for path in written:
        name = Path(path).name
        assert Path(path).stat().st_size < 512 * 1024, f"{name} is too large"
        found = differences(_load_pickle(path), _load_pickle(committed / name), name)
        assert not found, (
            f"{name} differs from the committed file ({found[:3]}): "
            "run `python -m instructor.reference_data`"
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    ["seed", "target", "mistake", "tolerance"],
)
def test_a_changed_generator_fails_the_reproducibility_check(change, tmp_path, monkeypatch):
    """The by-value comparison is tight enough to see a changed generator."""
    committed = Path(reference_data.OUT_DIRS["public"])
    make = reference_data.MAKERS["layer_norm"]

    def changed(seed, hidden):
        cases, mistakes = make(seed + (change == "seed"), hidden)
        if change == "target":
            cases[2]["target"] = cases[2]["target"] * (1 + 1e-4)
        if change == "mistake":
            key = next(iter(mistakes[0]))
            mistakes[0][key] = mistakes[0][key] + 1e-3
        return cases, mistakes

    monkeypatch.setitem(reference_data.MAKERS, "layer_norm", changed)
    if change == "tolerance":
        monkeypatch.setattr(reference_data.tolerances, "SAFETY_FACTOR", 100.0)
    written = reference_data.generate(tmp_path, "public", exercises=["layer_norm"])
    found = [
        d
        for path in written
        for d in differences(_load_pickle(path), _load_pickle(committed / Path(path).name))
    ]
    assert found, f"changing the {change} went unnoticed"


@pytest.mark.parametrize("change", ["target", "mistake", "tolerance"])
def test_the_comparison_sees_the_changes_of_a_changed_generator(change):
    """Fast form of the test above (one generation each, slow): the same changes made to the
    committed data of layer_norm, as the changed generator writes them."""
    name = {"target": "", "mistake": "_mistakes", "tolerance": "_grading"}[change]
    committed = _load_pickle(Path(reference_data.OUT_DIRS["public"]) / f"layer_norm{name}.pkl")
    changed = copy.deepcopy(committed)
    if change == "target":
        changed[2]["target"] = changed[2]["target"] * (1 + 1e-4)
    if change == "mistake":
        key = next(iter(changed[0]))
        changed[0][key] = changed[0][key] + 1e-3
    if change == "tolerance":  # SAFETY_FACTOR 100 instead of 10: measured tolerances 10x
        for case in changed["cases"]:
            case.update({k: case[k] * 10 for k in MEASURED_TOLERANCES if case.get(k)})
    assert differences(copy.deepcopy(committed), committed) == []
    assert differences(changed, committed), f"changing the {change} went unnoticed"


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


@pytest.mark.slow
@pytest.mark.parametrize("exercise_id", EXERCISE_IDS)
def test_stubbing_one_exercise_fails_exactly_its_test(exercise_id, tmp_path, monkeypatch):
    module = load_module(stub_exercise(SOURCE, exercise_id), tmp_path)
    outcome = run_student_tests(module, monkeypatch)
    target = method_for(exercise_id)
    status, message = outcome.pop(target)
    assert status == "fail" and "not implemented yet" in message, message
    info = harness.EXERCISES[exercise_id]
    assert f"exercise {info['number']}" in message
    broken = {name: result for name, result in outcome.items() if result[0] != "pass"}
    assert not broken, f"stubbing {exercise_id} also broke: {broken}"


def test_with_every_exercise_stubbed_each_test_fails_at_its_own_stub(tmp_path, monkeypatch):
    """With the next test, the fast form of the one above (2 suite runs instead of 11): each
    test fails at its own exercise's stub, saying that it is not implemented yet."""
    source = stub_exercise(SOURCE, *EXERCISE_IDS)
    outcome = run_student_tests(load_module(source, tmp_path), monkeypatch)
    assert set(outcome) == {method_for(i) for i in EXERCISE_IDS}
    for exercise_id in EXERCISE_IDS:
        status, message = outcome[method_for(exercise_id)]
        assert status == "fail" and "not implemented yet" in message, message
        assert f"exercise {harness.EXERCISES[exercise_id]['number']}" in message, message
        assert f"stub for {exercise_id}" in message, message


def test_each_test_passes_with_every_other_exercise_stubbed(tmp_path, monkeypatch):
    """No test needs another exercise's code: stubbing one exercise breaks no other test."""
    broken = {}
    for exercise_id in EXERCISE_IDS:
        source = stub_exercise(SOURCE, *(i for i in EXERCISE_IDS if i != exercise_id))
        folder = tmp_path / exercise_id
        folder.mkdir()
        name = method_for(exercise_id)
        result = run_student_tests(load_module(source, folder), monkeypatch, [name])[name]
        if result[0] != "pass":
            broken[exercise_id] = result
    assert not broken, f"these tests need another exercise's code: {broken}"


def test_every_stored_mistake_is_diagnosed_by_name():
    for exercise_id in EXERCISE_IDS:
        info = harness.EXERCISES[exercise_id]
        cases, mistakes, grading = harness.load_cases(info["data"])
        seen = set()
        for case, wrong, tol in zip(cases, mistakes, grading["cases"]):
            for description, output in wrong.items():
                message = compare.explain_difference(
                    output, case["target"], tol["rtol"], tol["atol"], wrong
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
        "self_attention",
        "k.transpose(1, 2)) / math.sqrt(self.query_dim)",
        "k.transpose(1, 2)) / math.sqrt(x.shape[-1])",
        "scaled by sqrt(input_dim)",
    ),
    (
        "self_attention",
        "k.transpose(1, 2)) / math.sqrt(self.query_dim)",
        "k.transpose(1, 2)) * math.sqrt(self.query_dim)",
        "multiplied by sqrt(query_dim)",
    ),
    (
        "self_attention",
        "weights = self.softmax(scores)",
        "weights = self.softmax(scores * math.sqrt(self.query_dim)) / math.sqrt(self.query_dim)",
        "scale is applied after the softmax",
    ),
    (
        "self_attention",
        "weights = self.softmax(scores)",
        "weights = scores.softmax(dim=0)",
        "softmax over the batch",
    ),  # fmt: skip
    (
        "self_attention",
        "q = self.W_query(x)  # (B, T, Dq)\n        k = self.W_key(x)  # (B, T, Dq)\n        v = self.W_value(x)",
        "q = x @ self.W_query.weight.T\n        k = x @ self.W_key.weight.T\n        v = x @ self.W_value.weight.T",
        "biases of the projections are left out",
    ),
    (
        "self_attention",
        "k = self.W_key(x)",
        "k = self.W_query(x)",
        "keys are projected with W_query",
    ),
    (
        "self_attention",
        "return torch.bmm(weights, v)",
        "return torch.bmm(weights.transpose(1, 2), v)",
        "attention weights are transposed",
    ),
    (
        "self_attention",
        "q = self.W_query(x)  # (B, T, Dq)\n        k = self.W_key(x)  # (B, T, Dq)\n        v = self.W_value(x)  # (B, T, Dv)\n        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.query_dim)  # (B, T, T)\n        weights = self.softmax(scores)  # (B, T, T), rows sum to 1\n        return torch.bmm(weights, v)",
        "B, T, _ = x.shape\n        x = x.reshape(1, B * T, -1)\n        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)\n        weights = self.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.query_dim))\n        return torch.bmm(weights, v).reshape(B, T, -1)",
        "attend across the whole batch",
    ),
    (
        "layer_norm",
        "x_hat = (x - mean) / torch.sqrt(var + self.eps)",
        "x_hat = (x - mean) / (var + self.eps)",
        "divided by the variance",
    ),
    (
        "layer_norm",
        "x_hat = (x - mean) / torch.sqrt(var + self.eps)",
        "x_hat = x / torch.sqrt(var + self.eps)",
        "the mean is not subtracted",
    ),
    (
        "layer_norm",
        "x_hat = (x - mean) / torch.sqrt(var + self.eps)",
        "x_hat = x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + self.eps)",
        "RMSNorm instead of LayerNorm",
    ),
    (
        "layer_norm",
        "return x_hat * self.w + self.b",
        "return (x_hat + self.b) * self.w",
        "bias is added before the scale",
    ),
    (
        "layer_norm",
        "torch.sqrt(var + self.eps)",
        "torch.sqrt(torch.sqrt(var) + self.eps)",
        "square root is taken twice",
    ),
    (
        "layer_norm",
        "mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)\n        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
        "mean = x.mean(dim=(0, 1), keepdim=True)\n        var = ((x - mean) ** 2).mean(dim=(0, 1), keepdim=True)",
        "per-channel statistics over every token of the batch",
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
        "tokens = self.norm(tokens)  # (B, T, E)",
        "",
        "final LayerNorm self.norm is skipped",
    ),
    (
        "vision_transformer",
        'pooled = tokens[:, 1:].mean(dim=1) if self.pool == "mean" else tokens[:, 0]',
        "pooled = tokens[:, 0]",
        "pool='mean' is ignored",
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


# (exercise id, snippet of the reference, an edit that makes it raise, where it raises)
CRASHES = [
    ("self_attention", "torch.bmm(q, k.transpose(1, 2))", "torch.bmm(q, k.T)",
     "case 1 of 5 [x (8, 10, 16)]"),
    ("layer_norm", "mean = x.mean(dim=-1, keepdim=True)", "mean = x.mean(dim=-1)",
     "case 1 of 5 [x (32, 12, 16), w (16,), b (16,)]"),
    (
        "multi_head_attention",  # a (B, T, S) mask used as it is: the wrong rank for (B, H, T, S)
        "            if attn_mask.dim() == 3:\n                attn_mask = attn_mask[:, None]  # (B, 1, T, S), same mask for all heads\n",
        "",
        "case 3 of 4 [embed_dim=16, num_heads=4, query (3, 4, 16)",
    ),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
@pytest.mark.parametrize(("exercise_id", "old", "new", "where"), CRASHES)
def test_code_that_raises_names_the_case_and_the_line(
    exercise_id, old, new, where, tmp_path, monkeypatch
):
    source = edit(SOURCE, old, new)
    name = method_for(exercise_id)
    status, message = run_student_tests(load_module(source, tmp_path), monkeypatch, [name])[name]
    assert status == "fail", message
    assert where in message and "your code raised an exception" in message, message
    assert "RuntimeError: " in message, message
    last = message.rstrip().splitlines()[-1]  # the student's line, not the harness's frames
    line = int(re.search(r"^\s*at transformer_utils\.py:(\d+) in forward:", last).group(1))
    assert source.splitlines()[line - 1].strip() in last


@pytest.mark.parametrize(
    ("exercise_id", "old", "new"),
    [
        ("layer_norm", "return x_hat * self.w + self.b", "return (x_hat * self.w + self.b) * (1 + 3e-5)"),
        ("self_attention", "return torch.bmm(weights, v)", "return torch.bmm(weights, v) * (1 + 3e-3)"),
    ],
)  # fmt: skip
def test_an_almost_right_answer_is_not_told_it_made_a_mistake(
    exercise_id, old, new, tmp_path, monkeypatch
):
    name = method_for(exercise_id)
    module = load_module(edit(SOURCE, old, new), tmp_path)
    status, message = run_student_tests(module, monkeypatch, [name])[name]
    assert status == "fail" and "wrong values" in message, message
    assert "known mistake" not in message, message


def test_a_correct_formula_that_loses_precision_passes_with_a_note(tmp_path, monkeypatch):
    source = edit(
        SOURCE,
        "var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
        "var = (x * x).mean(dim=-1, keepdim=True) - mean * mean",
    )
    monkeypatch.setitem(sys.modules, "transformer_utils", load_module(source, tmp_path))
    monkeypatch.setattr(harness, "OUTCOMES", {})
    with pytest.warns(harness.PrecisionNote, match="cancellation in E") as notes:
        test_functions.TestClass(method_for("layer_norm")).test_layer_norm()
    assert "passes (full marks)" in str(notes[0].message) and "case 3" in str(notes[0].message)


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

    with forbidden.forbidden_ops("layer_norm"):
        x = torch.randn(2, 3, 4)
        (x - x.mean(-1, keepdim=True)).softmax(-1)
    with pytest.raises(forbidden.ForbiddenOpError, match="layer_norm"):
        with forbidden.forbidden_ops("layer_norm"):
            torch.nn.LayerNorm(4)(x)


def _in_exercise_order(names):
    numbers = [harness.EXERCISES[n.removeprefix("test_")]["number"] for n in names]
    assert len(numbers) == len(EXERCISE_IDS), names
    return numbers == sorted(numbers, key=lambda n: tuple(map(int, n.split("."))))


# The practice exercises of instructor/assignment.yml (the summary line counts them).
PRACTICE = sum(role == "practice" for role in harness.exercise_roles().values())
SUMMARY = re.compile(
    r"^public checks: graded exercises passed (\d+)/(\d+), practice passed (\d+)/(\d+)$"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["-m", "unittest", "test_functions.TestClass.test_layer_norm", "-v"],
        ["-m", "unittest", "test_functions", "-v"],
        ["-m", "pytest", "test_functions.py", "-v", "-p", "no:cacheprovider"],
    ],
    ids=["one-test", "unittest", "pytest"],
)
def test_handout_commands_run_in_exercise_order_and_end_with_the_summary(command):
    """The handout's commands, as students type them (a subprocess each, 3-7 s with its torch
    import; the fast tier runs their in-process forms below)."""
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    output = result.stderr + result.stdout  # unittest reports on stderr; the summary is last
    assert result.returncode == 0, output[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    if command[2] == "test_functions.TestClass.test_layer_norm":
        assert "OK" in result.stderr and last == (
            f"public checks: graded exercises passed 1/2, practice passed 0/{PRACTICE} ({PRACTICE + 1} not run)"
        )
        return
    names = re.findall(r"(?:^|::)(test_\w+)(?: \(test_functions| PASSED)", output, re.M)
    assert _in_exercise_order(names), names
    assert SUMMARY.match(last).groups() == ("2", "2", str(PRACTICE), str(PRACTICE)), last


def _run_unittest(name, tmp_path, monkeypatch):
    """`python -m unittest <name> -v` in this process, on a copy of the reference solution:
    (the runner's output, the summary line the run would print at exit)."""
    monkeypatch.setitem(sys.modules, "transformer_utils", load_module(SOURCE, tmp_path))
    monkeypatch.setattr(harness, "OUTCOMES", {})
    suite = unittest.defaultTestLoader.loadTestsFromName(name)  # load_tests hook included
    stream = io.StringIO()
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    assert result.wasSuccessful(), stream.getvalue()[-3000:]
    return stream.getvalue(), harness.summary_line()


def test_unittest_runs_the_exercises_in_order_and_counts_them(tmp_path, monkeypatch):
    """In-process form of `python -m unittest test_functions -v`."""
    output, last = _run_unittest("test_functions", tmp_path, monkeypatch)
    names = re.findall(r"(?:^|::)(test_\w+)(?: \(test_functions| PASSED)", output, re.M)
    assert _in_exercise_order(names), names
    assert SUMMARY.match(last).groups() == ("2", "2", str(PRACTICE), str(PRACTICE)), last


def test_one_unittest_counts_the_others_as_not_run(tmp_path, monkeypatch):
    """In-process form of `python -m unittest test_functions.TestClass.test_layer_norm -v`."""
    name = "test_functions.TestClass.test_layer_norm"
    output, last = _run_unittest(name, tmp_path, monkeypatch)
    assert "test_layer_norm (test_functions.TestClass.test_layer_norm) ... ok" in output
    assert output.count(" ... ") == 1, output
    assert (
        last
        == f"public checks: graded exercises passed 1/2, practice passed 0/{PRACTICE} ({PRACTICE + 1} not run)"
    )


def test_the_summary_is_registered_to_print_at_exit(monkeypatch, capsys):
    """In-process form of "the summary is the last line": the first recorded outcome
    registers the summary with atexit, once, and it prints the summary line."""
    registered = []
    monkeypatch.setattr(harness.atexit, "register", registered.append)
    monkeypatch.setattr(harness, "_SUMMARY_REGISTERED", [])
    monkeypatch.setattr(harness, "OUTCOMES", {})
    harness._record("layer_norm", True)
    harness._record("self_attention", False)
    assert registered == [harness._print_summary]
    registered[0]()
    assert capsys.readouterr().out == (
        f"public checks: graded exercises passed 1/2, practice passed 0/{PRACTICE} ({PRACTICE} not run)\n"
    )


def test_pytest_collects_the_exercises_in_order():
    """In-process form of `python -m pytest test_functions.py`: the root conftest.py's hook
    reorders pytest's (alphabetical) items of test_functions.py, and only those."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    class Item:
        def __init__(self, nodeid):
            self.nodeid, self.name = nodeid, nodeid.split("::")[-1]

    alphabetical = sorted(n for n in dir(test_functions.TestClass) if n.startswith("test_"))
    assert not _in_exercise_order(alphabetical)  # else this test would prove nothing
    items = [Item("tests/test_a.py::test_z")]
    items += [Item(f"test_functions.py::TestClass::{n}") for n in alphabetical]
    items += [Item("tests/test_b.py::test_a")]
    conftest.pytest_collection_modifyitems(items)
    assert items[0].name == "test_z" and items[-1].name == "test_a"
    assert _in_exercise_order([item.name for item in items[1:-1]])


def test_the_summary_counts_from_the_data_in_a_student_release(tmp_path, monkeypatch):
    """A student release has no instructor/ folder: the roles come with test_data/."""
    (tmp_path / "test_data").mkdir()
    for path in (ROOT / "test_data").glob("*.pkl"):
        (tmp_path / "test_data" / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(harness, "DATA_DIR", str(tmp_path / "test_data"))
    outcomes = {"self_attention": True, "layer_norm": False, "conv2d": True}
    line = harness.summary_line(outcomes)
    assert (
        line
        == f"public checks: graded exercises passed 1/2, practice passed 1/{PRACTICE} ({PRACTICE - 1} not run)"
    )
    monkeypatch.setattr(harness, "DATA_DIR", str(ROOT / "test_data"))
    # the same from instructor/assignments/cs444_mp3.yml
    assert harness.summary_line(outcomes) == line


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
