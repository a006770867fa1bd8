"""Cases and known mistakes of 1.12 local-window attention (window_partition,
window_unpartition, WindowSelfAttention)."""

import math

import torch
import torch.nn.functional as F

import transformer_utils as tu  # the reference solution
from kit.exercise_checks import runners

from .random_inputs import _gen, _randn, _random_state

# (B, H, W, window, embed_dim, heads): a grid that is a multiple of the window, padding in H,
# in both, a window larger than the grid (global attention), padding in W with one head.
PUBLIC = [
    (2, 8, 8, 4, 16, 2),
    (2, 6, 8, 4, 32, 4),
    (3, 7, 5, 3, 24, 3),
    (2, 5, 6, 8, 32, 4),
    (2, 8, 6, 4, 16, 1),
]
HIDDEN = [
    (2, 6, 6, 3, 24, 3),
    (2, 9, 6, 4, 16, 2),
    (3, 4, 7, 2, 32, 4),
    (2, 6, 4, 6, 16, 2),
    (2, 5, 8, 4, 24, 2),
]


def _partition(x, w, layout):
    """window_partition as a mistake does it. layout: "ok"; "rows" (a reshape without the
    permute: each "window" is w*w consecutive tokens of the row-major grid); "top_left"
    (F.pad's arguments the wrong way round: the padding goes above and to the left)."""
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % w, (-W) % w
    pad = (0, 0, pad_w, 0, pad_h, 0) if layout == "top_left" else (0, 0, 0, pad_w, 0, pad_h)
    x = F.pad(x, pad)
    Hp, Wp = H + pad_h, W + pad_w
    if layout == "rows":
        return x.reshape(-1, w, w, C), (Hp, Wp)
    x = x.view(B, Hp // w, w, Wp // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w, w, C), (Hp, Wp)


def _unpartition(windows, w, pad_hw, hw, layout):
    (Hp, Wp), (H, W) = pad_hw, hw
    B = windows.shape[0] // ((Hp // w) * (Wp // w))
    if layout == "rows":
        x = windows.reshape(B, Hp, Wp, -1)
    else:
        x = windows.view(B, Hp // w, Wp // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(B, Hp, Wp, -1)
    return x[:, Hp - H :, Wp - W :] if layout == "top_left" else x[:, :H, :W]


def _attention_variant(
    m, x, layout="ok", mask="ok", split="ok", scale="head", softmax_dim=-1, out_proj=True
):
    """WindowSelfAttention.forward as a typical wrong implementation computes it.

    mask: "ok"; "zeros_before" (ViTDet's way without a mask: the zero-padded tokens are
    projected, so padded keys are the projection biases); "zeros_after" (projected, then
    zero-padded, no mask). split: "ok" or "no_transpose" ((B', N, C) reshaped straight to
    (B', heads, N, D)). scale: "head" (sqrt(D)), "embed" (sqrt(C)) or "none"."""
    B, H, W, C = x.shape
    w, heads, D = m.window_size, m.num_heads, m.head_dim
    N = w * w

    def split_heads(windows):  # (B', w, w, C) -> (B', heads, N, D)
        if split == "no_transpose":
            return windows.reshape(-1, heads, N, D)
        return windows.reshape(-1, N, heads, D).transpose(1, 2)

    projections = (m.q_proj, m.k_proj, m.v_proj)
    if mask == "zeros_before":
        windows, pad_hw = _partition(x, w, layout)
        q, k, v = (split_heads(p(windows)) for p in projections)
    else:
        pad_hw = _partition(x[..., :1], w, layout)[1]
        q, k, v = (split_heads(_partition(p(x), w, layout)[0]) for p in projections)
    divisor = {"head": math.sqrt(D), "embed": math.sqrt(C), "none": 1.0}[scale]
    scores = q @ k.transpose(-2, -1) / divisor  # (B', heads, N, N)
    if mask == "ok" and pad_hw != (H, W):
        real = _partition(x.new_ones(1, H, W, 1), w, layout)[0].view(1, -1, 1, 1, N) > 0
        scores = scores.view(B, -1, heads, N, N).masked_fill(~real, float("-inf"))
        scores = scores.view(-1, heads, N, N)
    out = scores.softmax(dim=softmax_dim) @ v  # (B', heads, N, D)
    if split == "no_transpose":
        out = out.reshape(-1, w, w, C)
    else:
        out = out.transpose(1, 2).reshape(-1, w, w, C)
    out = _unpartition(out, w, pad_hw, (H, W), layout)
    return m.out_proj(out) if out_proj else out


def _global_attention(m, x):
    """Multi-head attention over the whole grid, with the module's weights."""
    B, H, W, C = x.shape
    mha = tu.MultiHeadAttention(C, m.num_heads).eval()
    mha.load_state_dict(m.state_dict())
    tokens = x.reshape(B, H * W, C)  # (B, N, C), row-major
    return mha(tokens, tokens, tokens).view(B, H, W, C)


def _variant(m, case_input, attention=None, layout="ok"):
    """The runner's three outputs of a mistake: the partition, the unpartition and the
    attention of a student who makes it (``layout`` mistakes show in all three)."""
    x, windows, w = case_input["x"], case_input["windows"], case_input["window_size"]
    H, W = x.shape[1:3]
    pad_hw = (-(-H // w) * w, -(-W // w) * w)
    return {
        "window_partition": _partition(x, w, layout)[0],
        "window_unpartition": _unpartition(windows, w, pad_hw, (H, W), layout),
        "WindowSelfAttention": attention
        if attention is not None
        else _attention_variant(m, x, layout=layout),
    }


def window_attention_mistakes(m, case_input):
    """Outputs of the typical wrong implementations of 1.12 on one case."""
    x = case_input["x"]

    def wrong_attention(**kind):
        return _variant(m, case_input, _attention_variant(m, x, **kind))

    return {
        "windows cut across rows of the grid (a reshape without the permute): view the "
        "padded grid as (B, nH, w, nW, w, C) and permute it to (B, nH, nW, w, w, C) before "
        "reshaping (and the reverse in window_unpartition)": _variant(m, case_input, layout="rows"),
        "the grid is padded at the top/left: F.pad pads the last dim first, so "
        "(0, 0, 0, pad_w, 0, pad_h) pads W at the right and H at the bottom": _variant(
            m, case_input, layout="top_left"
        ),
        "padded positions are attended to as keys (ViTDet pads the tokens and projects "
        "them): set the scores of the padded keys to -inf before the softmax": wrong_attention(
            mask="zeros_before"
        ),
        "padded positions are attended to as keys (their zero keys still get weight "
        "exp(0)): set the scores of the padded keys to -inf before the softmax": wrong_attention(
            mask="zeros_after"
        ),
        "heads mixed up: a window's (N, C) tokens reshaped straight to (heads, N, D); reshape "
        "to (N, heads, D), then transpose to (heads, N, D) (and back the same way)": wrong_attention(
            split="no_transpose"
        ),
        "the scores are scaled by sqrt(embed_dim) instead of sqrt(head_dim)": wrong_attention(
            scale="embed"
        ),
        "the scores are not scaled: divide by sqrt(head_dim)": wrong_attention(scale="none"),
        "softmax over the queries: normalise over the keys (last dim)": wrong_attention(
            softmax_dim=-2
        ),
        "the output projection out_proj is not applied": wrong_attention(out_proj=False),
        "every token attends to the whole grid: attend only inside its window": _variant(
            m, case_input, _global_attention(m, x)
        ),
    }


def make_window_attention(seed, hidden):
    cases, mistakes = [], []
    for i, (B, H, W, w, E, heads) in enumerate(HIDDEN if hidden else PUBLIC):
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        m = tu.WindowSelfAttention(E, heads, w).eval()
        state = _random_state(m, gen, scale=2.0)
        x = _randn(gen, B, H, W, E)
        n_windows = B * -(-H // w) * -(-W // w)
        case_input = {
            "embed_dim": E,
            "num_heads": heads,
            "window_size": w,
            "x": x,
            "windows": _randn(gen, n_windows, w, w, E),
            "state_dict": state,
        }
        with torch.no_grad():
            target = runners.run_window_attention(tu, case_input)
            if w >= max(H, W):  # one window holds the grid: global attention, padding masked
                expected = _global_attention(m, x)
                assert torch.allclose(target["WindowSelfAttention"], expected, atol=1e-5)
            cases.append({"input": case_input, "target": target})
            mistakes.append(window_attention_mistakes(m, case_input))
    return cases, mistakes
