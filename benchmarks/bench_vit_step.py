"""One VPT-Deep training step: our ViT vs torchvision's vit_b_32, side by side in one process.

    python -m benchmarks.bench_vit_step                 # GPU: batch 128, bf16, eager + compile
    python -m benchmarks.bench_vit_step --tiny          # CPU check that the code runs (default
                                                        # when no GPU): a tiny ViT, batch 8
    python -m benchmarks.bench_vit_step --json out.json # also write the figures to a file

Both models get the same weights and the same step: 10 prompts per layer inserted after the
CLS token (deep: replaced before every layer), frozen backbone in eval mode, SGD on prompts
and head, cross-entropy, bf16 autocast on CUDA. torchvision's side is what a student writes on
top of ``torchvision.models.vit_b_32``: a loop over its ``EncoderBlock`` modules
(``nn.MultiheadAttention`` inside) with the prompts spliced in.

Reports images/s for each model and mode (eager, torch.compile), the ratio ours/torchvision
(target >= 1.0x) and the peak GPU memory of each step (target: ours no higher). Timings on the
CPU say nothing about the GPU targets.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from kit.runs import atomic_write_text
from vision_transformer import ENCODER_SPECS, build_vit

ROOT = Path(__file__).resolve().parents[1]


class _VPTDeep(nn.Module):
    """What both sides share: a frozen ViT (kept in eval mode), 10 prompts per layer (uniform
    init in [-v, v], v^2 = 6 / (2 * hidden)) and a linear head; subclasses give ``forward``."""

    def __init__(self, vit, n_classes, layers, num_prompts=10):
        super().__init__()
        self.vit = vit.requires_grad_(False).eval()
        d = vit.hidden_dim
        v = (6.0 / (d + d)) ** 0.5
        self.prompts = nn.Parameter(torch.empty(layers, num_prompts, d).uniform_(-v, v))
        self.head = nn.Linear(d, n_classes)

    def train(self, mode=True):
        super().train(mode)
        self.vit.eval()
        return self


class TorchvisionVPT(_VPTDeep):
    """VPT-Deep/Shallow on an unmodified torchvision VisionTransformer (the baseline)."""

    def __init__(
        self, vit: torchvision.models.VisionTransformer, n_classes, num_prompts=10, deep=True
    ):
        super().__init__(vit, n_classes, len(vit.encoder.layers) if deep else 1, num_prompts)

    def forward(self, images):
        vit = self.vit
        x = vit._process_input(images)  # (B, N, D)
        b, p = x.shape[0], self.prompts.shape[1]
        x = torch.cat([vit.class_token.expand(b, -1, -1), x], dim=1)
        x = vit.encoder.dropout(x + vit.encoder.pos_embedding)
        for i, layer in enumerate(vit.encoder.layers):
            if i == 0 or self.prompts.shape[0] > 1:
                rest = x[:, 1:] if i == 0 else x[:, 1 + p :]
                x = torch.cat([x[:, :1], self.prompts[i].expand(b, -1, -1).to(x.dtype), rest], 1)
            x = layer(x)
        return self.head(vit.encoder.ln(x)[:, 0])


class OursVPT(_VPTDeep):
    """The same step on our ViT (``fine_tune.ViTPrompt`` without building it from weights)."""

    def __init__(self, vit, n_classes, num_prompts=10, deep=True):
        super().__init__(vit, n_classes, vit.num_layers if deep else 1, num_prompts)

    def forward(self, images):
        return self.head(self.vit.features(images, self.prompts))


def make_model(name: str, spec: dict, state: dict, n_classes: int, device) -> nn.Module:
    """The VPT-Deep model ``name`` ('ours' or 'torchvision') with backbone weights ``state``."""
    if name == "torchvision":
        vit = torchvision.models.VisionTransformer(**spec)
    else:
        vit = build_vit(**{"encoder_name": "vit_b_32", **spec})
    vit.load_state_dict(state, strict=True)  # same weights in both
    torch.manual_seed(0)  # same prompts and head
    wrapper = TorchvisionVPT if name == "torchvision" else OursVPT
    return wrapper(vit, n_classes).to(device)


def make_step(model, images, labels, bf16, device):
    """A closure running one VPT training step of ``model`` (SGD on the trainable params)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_interleaved(steps_by_name: dict, rounds: int, warmup: int, device):
    """Median seconds per step and peak step memory per model, timing the models in turn
    (one step each per round) so that drifting clocks or load hit all of them alike.
    Memory: the most bytes allocated during a step above what was allocated before it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps_by_name.values():
        for _ in range(warmup):  # includes compilation for torch.compile
            step()
    sync()
    times = {name: [] for name in steps_by_name}
    peaks = dict.fromkeys(steps_by_name, 0)
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - t)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() - base)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = (ts[len(ts) // 2], peaks[name] if device.type == "cuda" else None)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny ViT, small batch (CPU check)")
    parser.add_argument("--full", action="store_true", help="ViT-B/32 even on the CPU")
    parser.add_argument("--batch", type=int, default=None, help="default 128 (8 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20, 5 tiny)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 5, 2 tiny)"
    )
    parser.add_argument("--modes", default="eager,compile", help="comma list: eager,compile")
    parser.add_argument("--channels_last", action="store_true", help="channels_last inputs")
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or (device.type == "cpu" and not args.full)
    spec = dict(ENCODER_SPECS["vit_tiny_test" if tiny else "vit_b_32"])
    batch = args.batch or (8 if tiny else 128)
    steps = args.steps or (5 if tiny else 20)
    warmup = args.warmup or (2 if tiny else 5)
    bf16 = device.type == "cuda"
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"{'TINY ViT ' if tiny else 'ViT-B/32 '}{spec}, batch {batch}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {steps} timed steps after {warmup} warm-up")  # fmt: skip
    if device.type == "cpu":
        print("CPU run: checks that the benchmark executes; the figures are NOT the GPU targets.")

    torch.manual_seed(0)
    images = torch.randn(batch, 3, spec["image_size"], spec["image_size"], device=device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 102, (batch,), device=device)
    state = torchvision.models.VisionTransformer(**spec).state_dict()
    results = {}
    for mode in args.modes.split(","):
        steps_by_name = {}
        for name in ("torchvision", "ours"):
            model = make_model(name, spec, state, 102, device)
            run = torch.compile(model) if mode == "compile" else model
            steps_by_name[name] = make_step(run, images, labels, bf16, device)
        for name, (sec, peak) in time_interleaved(steps_by_name, steps, warmup, device).items():
            results[f"{name}/{mode}"] = dict(
                img_per_s=batch / sec, step_ms=sec * 1e3, peak_bytes=peak
            )
            mem = f", step peak {peak / 2**20:.0f} MiB" if peak is not None else ""
            print(f"{name:12s} {mode:8s} {batch / sec:9.1f} img/s  ({sec * 1e3:.1f} ms/step){mem}")
        del steps_by_name
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ratios = {}
    for mode in args.modes.split(","):
        a, b = results.get(f"ours/{mode}"), results.get(f"torchvision/{mode}")
        if a and b:
            ratios[mode] = {"speed": a["img_per_s"] / b["img_per_s"], "peak_memory": None}
            line = f"ratio ours/torchvision ({mode}): speed {ratios[mode]['speed']:.2f}x"
            if a["peak_bytes"]:
                ratios[mode]["peak_memory"] = a["peak_bytes"] / b["peak_bytes"]
                line += f", peak memory {ratios[mode]['peak_memory']:.2f}x"
            print(line)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    summary = {"device": str(device), "gpu": gpu, "tiny": tiny, "batch": batch, "steps": steps,
               "bf16": bf16, "results": results, "ratios": ratios}  # fmt: skip
    print(json.dumps(summary))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
