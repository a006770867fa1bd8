"""Training throughput of Question 4's ViT (the kit's own attention) against the same
architecture built from ``torch.nn.TransformerEncoderLayer`` (fused attention), side by side.

    python -m benchmarks.bench_scratch            # GPU: vit_cifar10 (width 256, 6 layers), batch 128, bf16
    python -m benchmarks.bench_scratch --tiny     # CPU check (default without a GPU): vit_fmnist_cpu sizes

Both sides: normalisation, linear patch embedding, learned 1D positions, CLS token, pre-LN
encoder layers (GELU MLP), final LayerNorm, linear head on the CLS token; the same number of
parameters, the same batch and the same SGD step (``bench_vit_step.make_step``), bf16 autocast
on CUDA. The two are timed in turn, one step each per round
(``bench_vit_step.time_interleaved``), so load drifts hit both alike. Prints images/s of each
and the ratio ours / torch (target: at least 0.8x on CPU and GPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from benchmarks.bench_vit_step import make_step, time_interleaved
from kit.config import load_preset
from kit.scratch.models import Normalize, ScratchViT
from kit.scratch.recipe import ScratchConfig

ROOT = Path(__file__).resolve().parents[1]


class TorchViT(nn.Module):
    """ScratchViT's architecture from torch's own layers (nn.TransformerEncoderLayer)."""

    def __init__(self, image_size, in_channels, num_classes, *, patch_size, embed_dim, depth,
                 num_heads, mlp_ratio, dropout):  # fmt: skip
        super().__init__()
        self.p = patch_size
        grid = image_size // patch_size
        self.normalize = Normalize((0.5,) * in_channels, (0.5,) * in_channels)
        self.proj = nn.Linear(in_channels * patch_size * patch_size, embed_dim)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, int(embed_dim * mlp_ratio), dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.normalize(x)
        B, C, H, W = x.shape
        p = self.p
        patches = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).flatten(3)
        tokens = self.proj(patches.flatten(1, 2)) + self.pos  # (B, N, E)
        tokens = torch.cat([self.cls.expand(B, -1, -1), tokens], dim=1)
        return self.head(self.norm(self.encoder(tokens))[:, 0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU sizes (vit_fmnist_cpu, batch 64)")
    parser.add_argument("--preset", default=None, help="scratch preset (default: by mode)")
    parser.add_argument("--batch", type=int, default=None, help="default 128 (64 with --tiny)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed rounds (default 30, 10 tiny)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    preset = args.preset or ("vit_fmnist_cpu" if tiny else "vit_cifar10")
    cfg = load_preset("scratch", preset, ScratchConfig)
    side, channels = (28, 1) if cfg.dataset != "cifar10" else (32, 3)
    batch = args.batch or (64 if tiny else 128)
    steps = args.steps or (10 if tiny else 30)
    bf16 = device.type == "cuda"
    arch = dict(patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout)  # fmt: skip
    torch.manual_seed(0)
    models = {
        "ours": ScratchViT(side, channels, 10, **arch),
        "torch": TorchViT(side, channels, 10, **arch),
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    images = torch.rand(batch, channels, side, side, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    steps_by_name = {}
    for name, model in models.items():
        model = model.to(device)
        if args.compile:
            model = torch.compile(model)
        steps_by_name[name] = make_step(model, images, labels, bf16, device)
    print(f"{device}: preset {preset} ({arch}), batch {batch}, {'bf16' if bf16 else 'fp32'}, "
          f"parameters {counts}", flush=True)  # fmt: skip
    timings = time_interleaved(steps_by_name, steps, args.warmup, device)
    rate = {name: batch / seconds for name, (seconds, _) in timings.items()}
    for name, r in rate.items():
        print(f"  {name:6s} {r:9.0f} images/s")
    ratio = rate["ours"] / rate["torch"]
    print(f"ratio ours/torch: {ratio:.2f}x (target >= 0.8x)")
    result = {
        "device": str(device),
        "preset": preset,
        "batch": batch,
        "rates": rate,
        "ratio": ratio,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
