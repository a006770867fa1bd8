"""Exercise 1.12 (local-window attention) and the given code built on it.

- Each named mistake of 1.12, written into a copy of the reference solution, is named by the
  student test; correct answers written other ways pass and are told nothing.
- WindowSelfAttention against an independent oracle (MultiHeadAttention run window by window
  on the unpadded windows), its independence of the padding, and its global limit.
- GridTransformerBlock and SimpleViT: shapes, every parameter gets a gradient, a windowed
  block with a window as large as the grid equals the global block.
- Question 4's ``model: simple_vit``: built from the recipe and its presets, one-line errors.
- benchmarks/bench_window_attention.py in its tiny mode (the slow tier: with peak RSS).
"""

import dataclasses
import json

import pytest
import torch
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)
from test_exercise_bank import SOURCE, edit, load_module, method_for, run_student_tests

import transformer_utils as tu
from benchmarks import bench_window_attention
from kit.config import load_preset
from kit.errors import UserError
from kit.scratch.datasets import IMAGE_SHAPE
from kit.scratch.models import ScratchSimpleViT
from kit.scratch.recipe import ScratchConfig, build_checked_model, build_model, exercises_needed

ATTENTION = (
    "        q, pad_hw = windows_of_heads(self.q_proj(x))  # (B', heads, N, D)\n"
    "        k, _ = windows_of_heads(self.k_proj(x))  # (B', heads, N, D)\n"
    "        v, _ = windows_of_heads(self.v_proj(x))  # (B', heads, N, D)\n"
)
# ViTDet's order: pad and partition the tokens, then project the windows (padding included).
PROJECT_WINDOWS = (
    "        windows, pad_hw = window_partition(x, w)  # (B', w, w, C)\n"
    "        q, k, v = (p(windows).view(-1, N, heads, D).transpose(1, 2)\n"
    "                   for p in (self.q_proj, self.k_proj, self.v_proj))\n"
)
PERMUTE_IN = "windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, w, w, C)"
PERMUTE_OUT = "x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)"
SPLIT = "return windows.view(-1, N, heads, D).transpose(1, 2), pad_hw"
MERGE = "out = (attn @ v).transpose(1, 2).reshape(-1, w, w, C)"
SOFTMAX = "attn = scores.softmax(dim=-1)  # (B', heads, N, N); every window has a real token"
SCALE = "scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B', heads, N, N)"
MASK = "if pad_hw != (H, W):"
GLOBAL = (
    "        tokens = self.q_proj.weight.new_empty(0)  # every token attends to the whole grid\n"
    "        mha = MultiHeadAttention(C, heads)\n"
    "        mha.load_state_dict(self.state_dict())\n"
    "        tokens = x.reshape(B, H * W, C)\n"
    "        return mha(tokens, tokens, tokens).view(B, H, W, C)\n"
)

# (edits of the reference solution, the words the diagnosis must contain)
MISTAKES = {
    "rows": ([(PERMUTE_IN, "windows = x.reshape(-1, w, w, C)"),
              (PERMUTE_OUT, "x = x.reshape(B, Hp, Wp, -1)")], "windows cut across rows"),
    "top_left": ([("x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))",
                   "x = F.pad(x, (0, 0, pad_w, 0, pad_h, 0))"),
                  ("return x[:, :H, :W]", "return x[:, Hp - H :, Wp - W :]")],
                 "padded at the top/left"),
    "unmasked_zero_keys": ([(MASK, "if False:")], "their zero keys still get weight"),
    "unmasked_vitdet": ([(ATTENTION, PROJECT_WINDOWS), (MASK, "if False:")],
                        "ViTDet pads the tokens and projects them"),
    "heads": ([(SPLIT, "return windows.reshape(-1, heads, N, D), pad_hw"),
               (MERGE, "out = (attn @ v).reshape(-1, w, w, C)")], "heads mixed up"),
    "sqrt_c": ([(SCALE, "scores = q @ k.transpose(-2, -1) / math.sqrt(C)")],
               "sqrt(embed_dim) instead of sqrt(head_dim)"),
    "unscaled": ([(SCALE, "scores = q @ k.transpose(-2, -1)")], "not scaled"),
    "softmax_queries": ([(SOFTMAX, "attn = scores.softmax(dim=-2)")],
                        "softmax over the queries"),
    "no_out_proj": ([("return self.out_proj(out)  # (B, H, W, C)", "return out")],
                    "out_proj is not applied"),
    "global": ([("        N = w * w  # tokens per window\n", GLOBAL + "        N = w * w\n")],
               "attends to the whole grid"),
}  # fmt: skip

# Correct answers written other ways: they pass and are told nothing.
CORRECT = {
    "mask_with_a_large_negative": [
        ('masked_fill(~real, float("-inf"))', "masked_fill(~real, -1e9)")
    ],
    "project_the_padded_windows": [(ATTENTION, PROJECT_WINDOWS)],
    "scale_the_queries": [(SCALE, "scores = (q / math.sqrt(D)) @ k.transpose(-2, -1)")],
    "einsum_and_softmax_by_hand": [
        (SCALE, 'scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(D)'),
        (SOFTMAX, "e = (scores - scores.amax(-1, keepdim=True)).exp()\n"
                  "        attn = e / e.sum(-1, keepdim=True)"),
    ],
}  # fmt: skip


def _run(edits, tmp_path, monkeypatch):
    source = SOURCE
    for old, new in edits:
        source = edit(source, old, new)
    name = method_for("window_attention")
    return run_student_tests(load_module(source, tmp_path), monkeypatch, [name])[name]


@pytest.mark.parametrize("kind", MISTAKES)
def test_each_known_mistake_is_named(kind, tmp_path, monkeypatch):
    edits, diagnosis = MISTAKES[kind]
    status, message = _run(edits, tmp_path, monkeypatch)
    assert status == "fail", message
    assert "Your output matches a known mistake" in message and diagnosis in message, message


@pytest.mark.parametrize("kind", CORRECT)
def test_correct_answers_written_other_ways_pass(kind, tmp_path, monkeypatch):
    assert _run(CORRECT[kind], tmp_path, monkeypatch) == ("pass", "")


def test_an_almost_right_answer_is_not_told_it_made_a_mistake(tmp_path, monkeypatch):
    edits = [("return self.out_proj(out)  # (B, H, W, C)", "return self.out_proj(out) * 1.003")]
    status, message = _run(edits, tmp_path, monkeypatch)
    assert status == "fail" and "wrong values" in message, message
    assert "known mistake" not in message, message


def test_torch_attention_is_reported(tmp_path, monkeypatch):
    edits = [(SOFTMAX, SOFTMAX + "\n"
              "        torch.nn.functional.scaled_dot_product_attention(q, k, v)")]  # fmt: skip
    status, message = _run(edits, tmp_path, monkeypatch)
    assert status == "fail" and "ForbiddenOpError" in message, message
    assert "scaled_dot_product_attention" in message, message


def window_by_window(attn, x):
    """The oracle: MultiHeadAttention (1.3) on each window's real tokens, no padding at all."""
    mha = tu.MultiHeadAttention(attn.embed_dim, attn.num_heads)
    mha.load_state_dict(attn.state_dict())
    B, H, W, C = x.shape
    w, out = attn.window_size, torch.empty_like(x)
    for i in range(0, H, w):
        for j in range(0, W, w):
            window = x[:, i : i + w, j : j + w]  # (B, h, w', C), smaller at the bottom/right
            tokens = window.reshape(B, -1, C)
            out[:, i : i + w, j : j + w] = mha(tokens, tokens, tokens).view(window.shape)
    return out


@pytest.mark.parametrize("H, W, window, heads", [(8, 8, 4, 2), (7, 5, 3, 4), (5, 6, 8, 1)])
def test_window_attention_equals_attention_window_by_window(H, W, window, heads):
    torch.manual_seed(0)
    attn = tu.WindowSelfAttention(16, heads, window)
    x = torch.randn(2, H, W, 16)
    with torch.no_grad():
        assert torch.allclose(attn(x), window_by_window(attn, x), atol=1e-5)


def test_window_attention_ignores_what_lies_outside_the_window():
    """Changing one window's tokens changes only that window's outputs (the right/bottom
    windows are the padded ones)."""
    torch.manual_seed(0)
    attn = tu.WindowSelfAttention(8, 2, 3)
    x = torch.randn(1, 7, 5, 8)
    changed = x.clone()
    changed[:, 6:, 3:] += 1.0  # the bottom-right window: rows 6, columns 3-4
    with torch.no_grad():
        diff = (attn(changed) - attn(x)).abs().amax(-1)[0]  # (H, W)
    assert (diff[6:, 3:] > 1e-3).all() and diff[:6].max() == 0 and diff[:, :3].max() == 0


def test_window_attention_refuses_bad_settings_and_token_lists_in_one_line():
    for args, words in (((16, 3, 4), "divisible by num_heads"), ((16, 2, 0), "at least 1")):
        with pytest.raises(ValueError, match=words) as error:
            tu.WindowSelfAttention(*args)
        assert "\n" not in str(error.value)
    attn = tu.WindowSelfAttention(16, 2, 4)
    for x in (torch.randn(2, 64, 16), torch.randn(2, 8, 8, 12)):  # a token list; wrong width
        with pytest.raises(ValueError, match=r"reshape \(B, H \* W, C\) tokens") as error:
            attn(x)
        assert "\n" not in str(error.value)


def test_grid_block_shapes_and_its_global_limit():
    torch.manual_seed(0)
    windowed = tu.GridTransformerBlock(16, 2, mlp_ratio=2.0, window_size=8)
    global_ = tu.GridTransformerBlock(16, 2, mlp_ratio=2.0, window_size=None)
    assert isinstance(windowed.attn, tu.WindowSelfAttention)
    assert isinstance(global_.attn, tu.MultiHeadAttention)
    global_.load_state_dict(windowed.state_dict())  # the same parameter names
    x = torch.randn(2, 5, 7, 16)
    with torch.no_grad():
        out = windowed(x)
        assert out.shape == x.shape
        assert torch.allclose(out, global_(x), atol=1e-5)  # window >= grid: global attention
        small = tu.GridTransformerBlock(16, 2, 2.0, window_size=2)
        small.load_state_dict(windowed.state_dict())
        assert not torch.allclose(small(x), out, atol=1e-3)  # smaller windows do differ


def test_simple_vit_shapes_layers_and_gradients():
    torch.manual_seed(0)
    model = tu.SimpleViT(img_size=28, patch_size=4, in_channels=1, num_classes=10,
                         embed_dim=16, depth=4, num_heads=2, window_size=4)  # fmt: skip
    assert model.grid_size == 7 and model.global_layers == [0, 3]  # ViTDet: every third
    kinds = [type(b.attn).__name__ for b in model.blocks]
    assert kinds == ["MultiHeadAttention", "WindowSelfAttention", "WindowSelfAttention",
                     "MultiHeadAttention"]  # fmt: skip
    x = torch.rand(3, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (3, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient reaches {missing}"
    assert tu.vitdet_global_layers(12) == [2, 5, 8, 11]  # ViTDet-B's global blocks
    with pytest.raises(ValueError, match="global_layers"):
        tu.SimpleViT(depth=2, global_layers=[2])
    with pytest.raises(ValueError, match="pos_embedding"):
        tu.SimpleViT(pos_embedding="learned3d")


# ---------------------------------------------------------------- Question 4: model simple_vit


def test_simple_vit_builds_from_the_recipe_and_refuses_bad_settings_in_one_line():
    cfg = ScratchConfig(dataset="fashion_mnist", model="simple_vit", patch_size=4, depth=3,
                        embed_dim=16, num_heads=2, window_size=4, global_layers=[2])  # fmt: skip
    model = build_model(cfg, 1, 28, 10)
    assert isinstance(model, ScratchSimpleViT) and model.patch_grid == 7
    assert model.vit.global_layers == [2] and model.vit.blocks[0].attn.window_size == 4
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    bad = {
        "global_layers": dict(global_layers=[3]),
        "window_size": dict(window_size=0),
        "divisible by 3": dict(num_heads=3),
        "does not divide": dict(patch_size=8),
    }
    for words, change in bad.items():
        with pytest.raises(UserError, match=words) as error:
            build_model(dataclasses.replace(cfg, **change), 1, 28, 10)
        assert "\n" not in str(error.value)


def test_an_unwritten_window_attention_stops_a_simple_vit_run_in_one_line(monkeypatch):
    def stub(self, x):
        raise NotImplementedError(
            "WindowSelfAttention.forward is not implemented yet (exercise 1.12): write it"
        )

    monkeypatch.setattr(tu.WindowSelfAttention, "forward", stub)
    cfg = ScratchConfig(dataset="fashion_mnist", model="simple_vit", patch_size=7, depth=2,
                        embed_dim=16, num_heads=2, window_size=2)  # fmt: skip
    with pytest.raises(UserError, match=r"WindowSelfAttention.forward .* \(exercise 1.12\)"):
        build_checked_model(cfg)


def test_a_simple_vit_needs_window_attention_and_not_the_vit_exercises():
    cfg = ScratchConfig(model="simple_vit", pos_embedding="none")
    assert sorted(exercises_needed(cfg)) == [
        "layer_norm", "multi_head_attention", "patch_embedding", "window_attention"]  # fmt: skip
    only_windows = dataclasses.replace(cfg, global_layers=[], pos_embedding="sinusoidal")
    assert sorted(exercises_needed(only_windows)) == [
        "layer_norm", "patch_embedding", "positional_encoding", "window_attention"]  # fmt: skip


def test_the_simplevit_presets_build_their_models():
    for name in ("simplevit_fmnist_cpu", "simplevit_cifar10"):
        cfg = load_preset("scratch", name, ScratchConfig)
        channels, side = IMAGE_SHAPE[cfg.dataset]
        model = build_model(cfg, channels, side, 10)
        windowed = [b.attn.window_size < model.patch_grid for b in model.vit.blocks
                    if isinstance(b.attn, tu.WindowSelfAttention)]  # fmt: skip
        assert windowed and all(windowed), name  # real windows, smaller than the grid
        assert model.vit.global_layers, name


# ---------------------------------------------------------------- the benchmark


def test_bench_window_attention_runs_in_tiny_mode(capsys):
    result = bench_window_attention.main(["--tiny", "--rounds", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    assert set(result["results"]) == {"8x8", "16x16"}
    sides = result["results"]["16x16"]
    assert set(sides) == {"window", "global", "sdpa"} and all(s["ms"] > 0 for s in sides.values())
    # 16x16 grid, window 4: 16 windows of 16 tokens against one window of 256 tokens
    assert sides["global"]["attn_matrix_bytes"] == 16 * sides["window"]["attn_matrix_bytes"]
    assert set(result["ratios"]["16x16"]) == {"global/window", "sdpa/window"}
    assert "global/window" in out


@pytest.mark.slow
def test_bench_window_attention_measures_peak_rss_in_subprocesses(capsys):
    # 256 MiB held here: a child whose peak starts at its parent's (getrusage's ru_maxrss
    # does, across fork and exec) would report no growth at all
    ballast = torch.ones(64 * 2**20)
    result = bench_window_attention.main(["--sizes", "32", "--rounds", "1", "--warmup", "0"])
    del ballast
    growth = {name: side["rss_growth_mib"] for name, side in result["results"]["32x32"].items()}
    # global keeps a few (2, 2, 1024, 1024) float32 matrices (16 MiB each); the window's are 1 MiB
    assert growth["global"] > 40 and growth["global"] > 2 * growth["window"], growth
    assert "peak RSS growth" in capsys.readouterr().out
