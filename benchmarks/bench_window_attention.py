"""Local-window attention (exercise 1.12) against global attention as the token grid grows.

    python -m benchmarks.bench_window_attention          # grids 16, 32, 64 (GPU: also 128)
    python -m benchmarks.bench_window_attention --tiny   # a check that it runs, in seconds
    python -m benchmarks.bench_window_attention --sizes 32,64 --window 8 --rounds 7

Three sides, side by side in one process: one self-attention layer of the same weights
(q, k, v and output projections of width ``--dim``, ``--heads`` heads), forward + backward on a
(batch, S, S, dim) grid of tokens:

- ``window``: ``transformer_utils.WindowSelfAttention`` (the reference solution of 1.12),
  windows of ``--window`` x ``--window`` tokens;
- ``global``: ``transformer_utils.MultiHeadAttention`` (1.3) over all S * S tokens: it forms
  the (S^2 x S^2) attention matrix;
- ``sdpa``: the same projections around torch's ``F.scaled_dot_product_attention`` over all
  tokens (fused kernels, flash-style on the CPU, that never hold the whole matrix).

Time: the median of ``--rounds`` forward + backward steps, the sides timed in turn in every
round (``bench_vit_step.time_interleaved``), so load on a shared machine hits all of them
alike. Printed: ms per step and the ratios global/window and sdpa/window (how many times
faster the window is; target: at least 4x over global at 64x64 with window 8 on a CPU).

Memory. On CUDA: the peak bytes allocated during a step. On a CPU there is no such counter:
torch's CPU tensors come from malloc, which ``tracemalloc`` (Python objects only) does not
see. So two figures: (1) ``attn_matrix_bytes``, the size in theory of ONE float32 attention
matrix of the step: batch x heads x (S^2)^2 for global, batch x heads x windows x (w^2)^2 for
the window (padding counted); the step keeps a few of these (scores, softmax for backward,
its gradient); sdpa keeps none (0). (2) With ``--rss`` (the default, not with ``--tiny``):
each side and size also runs alone in a fresh subprocess, which reports how much its peak
resident set (``VmHWM`` of /proc/self/status, a high-water mark) grew during two steps beyond
what it held before them; allocator caching and page granularity make it approximate.
Prints one JSON summary line last.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn

import transformer_utils as tu
from benchmarks.bench_vit_step import time_interleaved

SIDES = ("window", "global", "sdpa")
TARGET = {"size": 64, "window": 8, "global/window": 4.0}  # on a CPU


class SdpaAttention(nn.Module):
    """MultiHeadAttention's projections around F.scaled_dot_product_attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):  # x (B, N, C)
        B, N, C = x.shape

        def split(t):  # (B, N, C) -> (B, heads, N, D)
            return t.view(B, N, self.heads, C // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))


def make_side(name, dim, heads, window):
    """(module, forward(x (B, S, S, C)) -> (B, S, S, C)); every side has the same weights."""
    torch.manual_seed(0)
    weights = tu.WindowSelfAttention(dim, heads, window).state_dict()
    if name == "window":
        module = tu.WindowSelfAttention(dim, heads, window)
        module.load_state_dict(weights)
        return module, module
    module = tu.MultiHeadAttention(dim, heads) if name == "global" else SdpaAttention(dim, heads)
    module.load_state_dict(weights)

    def forward(x):
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)  # (B, N, C), row-major
        out = module(tokens, tokens, tokens) if name == "global" else module(tokens)
        return out.view(B, H, W, C)

    return module, forward


def make_step(name, size, args, device):
    """A closure running one forward + backward step of one side on a fixed grid."""
    module, forward = make_side(name, args.dim, args.heads, args.window)
    module.to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, size, size, args.dim, generator=gen).to(device)
    grad = torch.randn(args.batch, size, size, args.dim, generator=gen).to(device)
    x.requires_grad_(True)

    def step():
        x.grad = None
        for p in module.parameters():
            p.grad = None
        forward(x).backward(grad)

    return step


def attn_matrix_bytes(name, size, args):
    """Bytes of ONE float32 attention matrix of the step (see the module's docstring)."""
    if name == "sdpa":
        return 0
    if name == "global":
        return 4 * args.batch * args.heads * (size * size) ** 2
    windows = math.ceil(size / args.window) ** 2
    return 4 * args.batch * args.heads * windows * (args.window**2) ** 2


def peak_rss_growth(name, size, args):
    """MiB by which a fresh process's peak resident set grows in two steps of one side."""
    command = [sys.executable, "-m", "benchmarks.bench_window_attention", "--child",
               f"{name}:{size}", "--dim", str(args.dim), "--heads", str(args.heads),
               "--window", str(args.window), "--batch", str(args.batch),
               "--threads", str(torch.get_num_threads())]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])["rss_growth_mib"]


def _max_rss_mib():
    """This process's peak resident set in MiB: /proc's VmHWM, the high-water mark of this
    program's own memory. Not getrusage's ru_maxrss: Linux carries that across fork and exec,
    so a child started by a parent holding 1 GiB already reports 1 GiB and grows by 0."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB (not /proc)


def child(spec, args):
    """--child side:size: two steps alone in this process; prints the peak RSS growth."""
    name, size = spec.split(":")
    step = make_step(name, int(size), args, torch.device("cpu"))
    before = _max_rss_mib()
    step()
    step()
    print(json.dumps({"rss_growth_mib": round(_max_rss_mib() - before, 1)}))


def check_same_outputs(args, device):
    """The three sides compute the same function on a grid of one window."""
    x = torch.randn(1, args.window, args.window, args.dim, device=device)
    got = {}
    with torch.no_grad():
        for name in SIDES:
            module, forward = make_side(name, args.dim, args.heads, args.window)
            module.to(device)
            got[name] = forward(x)
    for name in ("global", "sdpa"):
        if not torch.allclose(got[name], got["window"], atol=1e-4):
            raise AssertionError(f"{name} attention differs from window attention")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small grids and width, no --rss")
    parser.add_argument("--sizes", default=None, help="grid sides, e.g. 16,32,64")
    parser.add_argument("--window", type=int, default=None, help="window side (default 8)")
    parser.add_argument("--dim", type=int, default=None, help="embedding width (default 64)")
    parser.add_argument("--heads", type=int, default=None, help="heads (default 2)")
    parser.add_argument("--batch", type=int, default=None, help="grids per step (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                        help="peak RSS of each case in a subprocess (CPU; default on)")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and args.child is None
    defaults = dict(window=4, dim=16, heads=2, batch=1, rounds=2) if args.tiny else (
        dict(window=8, dim=64, heads=2, batch=2, rounds=5))  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = args.sizes or ("8,16" if args.tiny else "16,32,64,128" if gpu else "16,32,64")
    args.sizes = [int(s) for s in sizes.split(",")]
    if args.rss is None:
        args.rss = not args.tiny and not gpu
    return args


def main(argv=None):
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}, {torch.get_num_threads()} threads), window "
          f"{args.window}, width {args.dim}, {args.heads} heads, batch {args.batch}, fp32, "
          f"forward + backward, median of {args.rounds} rounds")  # fmt: skip
    check_same_outputs(args, device)
    results, ratios = {}, {}
    header = f"{'grid':>9} {'tokens':>6} | " + " ".join(f"{s + ' ms':>10}" for s in SIDES)
    print(header + " | global/window sdpa/window | attention matrix window / global")
    for size in args.sizes:
        steps = {n: make_step(n, size, args, device) for n in SIDES}
        timed = time_interleaved(steps, args.rounds, args.warmup, device)
        del steps
        grid = f"{size}x{size}"
        results[grid] = {}
        for n, (seconds, peak) in timed.items():
            results[grid][n] = {
                "ms": round(seconds * 1e3, 3),
                "attn_matrix_bytes": attn_matrix_bytes(n, size, args),
                "cuda_peak_bytes": peak,
            }
            if args.rss:
                results[grid][n]["rss_growth_mib"] = peak_rss_growth(n, size, args)
        ms = {n: results[grid][n]["ms"] for n in SIDES}
        ratios[grid] = {f"{n}/window": round(ms[n] / ms["window"], 2) for n in ("global", "sdpa")}
        mib = [attn_matrix_bytes(n, size, args) / 2**20 for n in ("window", "global")]
        print(f"{grid:>9} {size * size:>6} | " + " ".join(f"{ms[n]:10.2f}" for n in SIDES)
              + f" | {ratios[grid]['global/window']:12.2f}x {ratios[grid]['sdpa/window']:10.2f}x"
              + f" | {mib[0]:.2f} / {mib[1]:.2f} MiB", flush=True)  # fmt: skip
    _print_memory(results, args, device)
    goal = f"{TARGET['size']}x{TARGET['size']}"
    met = None
    if goal in ratios and args.window == TARGET["window"] and device.type == "cpu":
        met = ratios[goal]["global/window"] >= TARGET["global/window"]
        print(f"target (CPU, {goal}, window 8): window >= 4x faster than global: "
              f"{ratios[goal]['global/window']:.2f}x, {'met' if met else 'NOT met'}")  # fmt: skip
    summary = {"device": str(device), "name": name, "threads": torch.get_num_threads(),
               "window": args.window, "dim": args.dim, "heads": args.heads,
               "batch": args.batch, "rounds": args.rounds, "results": results,
               "ratios": ratios, "target_met": met}  # fmt: skip
    print(json.dumps(summary))
    return summary


def _print_memory(results, args, device):
    if device.type == "cuda":
        print("peak CUDA memory of a step (MiB): " + "; ".join(
            f"{g}: " + ", ".join(f"{n} {r[n]['cuda_peak_bytes'] / 2**20:.1f}" for n in SIDES)
            for g, r in results.items()))  # fmt: skip
    elif args.rss:
        print("peak RSS growth of two steps, each alone in a fresh process (MiB): " + "; ".join(
            f"{g}: " + ", ".join(f"{n} {r[n]['rss_growth_mib']:.0f}" for n in SIDES)
            for g, r in results.items()))  # fmt: skip


if __name__ == "__main__":
    main()
