"""The vit_vpt_deep recipe end to end: our pipeline vs the original one, in one process.

    python benchmarks/bench_flower_pipeline.py                   # GPU: 100 epochs, ViT-B/32
    python benchmarks/bench_flower_pipeline.py --epochs 5        # shorter
    python benchmarks/bench_flower_pipeline.py --tiny            # CPU check that it runs (default
                                                                 # without a GPU)

Ours: images decoded and resized once into uint8 tensors on the device, crop/flip/normalise
per batch on the device, our ViT with bf16 autocast (CUDA), the shared Trainer (validation
every epoch, checkpoints included). Original: a DataLoader over PIL images with
Resize(256)/RandomCrop(224)/RandomHorizontalFlip/ToTensor/Normalize (validation:
Resize/CenterCrop), torchvision's vit_b_32 with prompts spliced in, fp32, as the original kit
trained. Same recipe (SGD lr 0.01, wd 0.01, momentum 0.99, lr /10 at 60% and 80% of the epochs
when fewer than 100 are run, batch 32), same initial weights.

Data: --data_dir (the real flowers) or, by default, synthetic flowers of the real counts
generated into a temporary folder (generation is not timed). Targets on an H100: ours at
least 10x faster end to end and 60 s or less for 100 epochs. CPU figures are not the target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_vit_step import TorchvisionVPT  # noqa: E402

import synthetic_flowers  # noqa: E402
from custom_dataset import FlowerPILDataset, flower_batch_sources, load_flower_splits  # noqa: E402
from demo_flower import FlowerConfig  # noqa: E402
from experiment_config import load_preset  # noqa: E402
from fine_tune import TrainConfig, Trainer, ViTPrompt  # noqa: E402
from gpu_transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from training_utils import DistContext, setup_logging  # noqa: E402
from vision_transformer import ENCODER_SPECS  # noqa: E402


def recipe(epochs: int, tiny: bool) -> FlowerConfig:
    cfg = load_preset("flower", "vit_vpt_deep", FlowerConfig)
    scale = epochs / cfg.epochs  # keep the milestones at 60% / 80% of the run
    cfg = dataclasses.replace(
        cfg, epochs=epochs, milestones=[max(1, round(m * scale)) for m in cfg.milestones]
    )
    if tiny:
        cfg = dataclasses.replace(cfg, encoder_name="vit_tiny_test", image_size=32, resize_size=36)
    return cfg


def subset(splits, n_train, n_val):
    if not n_train:
        return splits
    return {
        "train": (splits["train"][0][:n_train], splits["train"][1][:n_train]),
        "val": (splits["val"][0][:n_val], splits["val"][1][:n_val]),
        "test": (splits["test"][0][:8], splits["test"][1][:8]),
    }


def run_ours(splits, cfg: FlowerConfig, device, compile_model: bool, compile_mode: str) -> dict:
    start = time.perf_counter()
    torch.manual_seed(0)
    model = ViTPrompt(
        102, cfg.encoder_name, num_prompts=cfg.num_prompts, weights=None, image_size=cfg.image_size
    ).to(device)
    channels_last = device.type == "cuda"
    train, val, _ = flower_batch_sources(
        splits, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        image_size=cfg.image_size, resize_size=cfg.resize_size, device=device,
        channels_last=channels_last, log=lambda _: None,
    )  # fmt: skip
    prep = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as run_dir:
        tcfg = dataclasses.replace(
            TrainConfig.from_config(cfg), compile=compile_model, compile_mode=compile_mode
        )
        trainer = Trainer(
            model, train, val, run_dir, tcfg, dist_ctx=DistContext(device=device),
            logger=setup_logging(None, True, name="bench"),
        )  # fmt: skip
        result = trainer.fit()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return dict(seconds=time.perf_counter() - start, prep_seconds=prep,
                final_val_acc=result["history"][-1]["val_acc"])  # fmt: skip


def run_original(splits, cfg: FlowerConfig, device, workers: int) -> dict:
    """The original kit's loop: PIL transforms in DataLoader workers, fp32."""
    start = time.perf_counter()
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.Resize(cfg.resize_size), T.RandomCrop(cfg.image_size),
                          T.RandomHorizontalFlip(), T.ToTensor(), norm])  # fmt: skip
    eval_tf = T.Compose(
        [T.Resize(cfg.resize_size), T.CenterCrop(cfg.image_size), T.ToTensor(), norm]
    )
    loader = dict(
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0
    )
    train = torch.utils.data.DataLoader(
        FlowerPILDataset(*splits["train"], train_tf),
        batch_size=cfg.batch_size,
        shuffle=True,
        **loader,
    )
    val = torch.utils.data.DataLoader(
        FlowerPILDataset(*splits["val"], eval_tf), batch_size=128, **loader
    )
    spec = dict(ENCODER_SPECS[cfg.encoder_name], image_size=cfg.image_size)
    torch.manual_seed(0)
    model = TorchvisionVPT(torchvision.models.VisionTransformer(**spec), 102).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, cfg.gamma)
    for _epoch in range(cfg.epochs):
        model.train()
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        correct = count = 0
        with torch.no_grad():
            for x, y in val:
                x, y = x.to(device), y.to(device)
                correct += (model(x).argmax(1) == y).sum().item()
                count += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return dict(seconds=time.perf_counter() - start, final_val_acc=correct / max(count, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default 100 (1 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny ViT, 32 px, 128 images (CPU)")
    parser.add_argument("--data_dir", default=None, help="real flower data (default: synthetic)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--only", choices=["both", "ours", "original"], default="both")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--compile_mode", default="default", help="e.g. reduce-overhead")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    epochs = args.epochs or (1 if tiny else 100)
    cfg = recipe(epochs, tiny)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            counts = {"train": 128, "val": 64, "test": 8} if tiny else None
            data_dir = synthetic_flowers.generate(Path(tmp) / "flowers", counts=counts, log=print)
        splits = subset(load_flower_splits(data_dir), *((128, 64) if tiny else (0, 0)))
    n_train, n_val = len(splits["train"][0]), len(splits["val"][0])
    print(f"device {device}; vit_vpt_deep recipe, {epochs} epochs, {n_train} train / {n_val} val "
          f"images ({'synthetic' if args.data_dir is None else data_dir}); "
          f"{'TINY ViT, 32 px' if tiny else 'ViT-B/32, 224 px'}")  # fmt: skip
    if device.type == "cpu":
        print("CPU run: checks that the benchmark executes; the figures are NOT the GPU targets.")
    results = {}
    if args.only in ("both", "ours"):
        results["ours"] = run_ours(splits, cfg, device, args.compile, args.compile_mode)
        print(f"ours      {results['ours']['seconds']:8.1f} s  (data prep "
              f"{results['ours']['prep_seconds']:.1f} s)  val acc {results['ours']['final_val_acc']:.3f}")  # fmt: skip
    if args.only in ("both", "original"):
        results["original"] = run_original(splits, cfg, device, args.workers)
        print(f"original  {results['original']['seconds']:8.1f} s  ({args.workers} DataLoader workers)"
              f"  val acc {results['original']['final_val_acc']:.3f}")  # fmt: skip
    if len(results) == 2:
        ratio = results["original"]["seconds"] / results["ours"]["seconds"]
        print(f"speed-up ours vs original: {ratio:.1f}x (target on an H100: >= 10x, ours <= 60 s)")
    print(json.dumps({"device": str(device), "tiny": tiny, "epochs": epochs, "results": results}))


if __name__ == "__main__":
    main()
