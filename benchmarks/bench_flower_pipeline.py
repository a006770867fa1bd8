"""The vit_vpt_deep recipe end to end: our pipeline vs the original one, in one process.

    python -m benchmarks.bench_flower_pipeline                   # GPU: 100 epochs, ViT-B/32
    python -m benchmarks.bench_flower_pipeline --original_epochs 10   # the original timed for
                                          # 10 epochs and projected to 100 (fits a 10-min slot)
    python -m benchmarks.bench_flower_pipeline --tiny            # CPU check that it runs (default
                                                                 # without a GPU)

--synthetic_dir DIR keeps the generated data for the next run; --json PATH writes the summary.

Ours: images decoded and resized once into uint8 tensors on the device, crop/flip/normalise
per batch on the device, our ViT with bf16 autocast (CUDA), the shared Trainer (validation
every epoch, checkpoints included). Original: a DataLoader over PIL images with
Resize(256)/RandomCrop(224)/RandomHorizontalFlip/ToTensor/Normalize (validation:
Resize/CenterCrop), torchvision's vit_b_32 with prompts spliced in, fp32, as the original kit
trained. Same recipe (SGD lr 0.01, wd 0.01, momentum 0.99, lr /10 at 60% and 80% of the epochs
when fewer than 100 are run, batch 32), same initial weights.

Data: --data_dir (the real flowers) or, by default, synthetic flowers of the real counts
generated into a temporary folder and upscaled to the real photos' size (--image_side,
default 500 px on the shorter side, as in Oxford-102), so that decoding and resizing cost
what they cost on the real data (generation is not timed). Targets on an H100: ours at
least 10x faster per epoch and 60 s or less for 100 epochs. CPU figures are not the target.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from benchmarks.bench_vit_step import TorchvisionVPT
from benchmarks.pipeline_timing import add_arguments, fit_ours, run_and_report, run_original_loop
from custom_dataset import load_flower_splits
from fine_tune import ViTPrompt
from kit.config import load_preset
from kit.flower import synthetic as synthetic_flowers
from kit.flower.recipe import FlowerConfig, flower_batch_sources
from kit.image_ops import IMAGENET_MEAN, IMAGENET_STD
from kit.trainer import TrainConfig
from vision_transformer import ENCODER_SPECS

ROOT = Path(__file__).resolve().parents[1]


class FlowerPILDataset(torch.utils.data.Dataset):
    """The original kit's per-image pipeline (PIL image -> torchvision transform), kept as the
    baseline of ``benchmarks/bench_flower_pipeline.py``. Returns (transform(image), label)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


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
    tcfg = dataclasses.replace(
        TrainConfig.from_config(cfg), compile=compile_model, compile_mode=compile_mode
    )
    return fit_ours(model, train, val, tcfg, device, start, prep)


def synthetic_splits(folder: Path, counts: dict | None) -> dict:
    """The synthetic flowers (seed 0, ``counts`` or the real counts) in ``folder``: reused
    when it already holds exactly them (``--synthetic_dir``), generated there otherwise."""
    want = counts or synthetic_flowers.REAL_COUNTS
    marker = folder / "SYNTHETIC_DATA_README.txt"
    if marker.is_file() and "with seed 0." in marker.read_text():
        try:
            splits = load_flower_splits(folder)
        except Exception:  # a half-written or foreign folder: generate it again
            splits = None
        if splits and all(len(splits[s][0]) == n for s, n in want.items()):
            print(f"reusing the synthetic flowers in {folder}")
            return splits
    elif any(folder.glob("*_data.pkl")):
        sys.exit(f"error: {folder} holds data not made by kit/flower/synthetic.py; give it as "
                 "--data_dir, or choose an empty --synthetic_dir")  # fmt: skip
    return load_flower_splits(synthetic_flowers.generate(folder, counts=counts, log=print))


def upscale(splits: dict, short_side: int) -> dict:
    """The train and val images (what the benchmark times) resized, bilinear, so that their
    shorter side is ``short_side`` pixels; the test split is kept as it is."""

    def one(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        size = (round(w * scale), round(h * scale))
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))

    resized = {s: ([one(im) for im in splits[s][0]], splits[s][1]) for s in ("train", "val")}
    return {**splits, **resized}


def run_original(splits, cfg: FlowerConfig, device, workers: int, epochs: int) -> dict:
    """The original kit's pipeline: PIL transforms in DataLoader workers, fp32."""
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
    return run_original_loop(
        model, train, val, opt, epochs, device, lambda b: ((b[0],), b[1]), scheduler=sched
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, full_epochs=100, workers=min(8, os.cpu_count() or 1))
    parser.add_argument(
        "--image_side", type=int, default=500, help="synthetic images' shorter side (0: as made)"
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    epochs = args.epochs or (1 if tiny else 100)
    cfg = recipe(epochs, tiny)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir is None:
            counts = {"train": 128, "val": 64, "test": 8} if tiny else None
            folder = Path(args.synthetic_dir or Path(tmp) / "flowers")
            splits = synthetic_splits(folder, counts)
        else:
            splits = load_flower_splits(args.data_dir)
        splits = subset(splits, *((128, 64) if tiny else (0, 0)))
    source = str(args.data_dir)
    if args.data_dir is None:
        side = 64 if tiny else args.image_side
        if side:
            splits = upscale(splits, side)
        source = f"SYNTHETIC, shorter side {side or 'as generated'} px"
    n_train, n_val = len(splits["train"][0]), len(splits["val"][0])
    print(f"device {device}; vit_vpt_deep recipe, {epochs} epochs, {n_train} train / {n_val} val "
          f"images ({source}); {'TINY ViT, 32 px' if tiny else 'ViT-B/32, 224 px'}")  # fmt: skip
    return run_and_report(
        args,
        epochs,
        lambda: run_ours(splits, cfg, device, args.compile, args.compile_mode),
        lambda original_epochs: run_original(splits, cfg, device, args.workers, original_epochs),
        "target on an H100: >= 10x, ours <= 60 s for 100 epochs",
        {"device": str(device), "tiny": tiny, "epochs": epochs, "data": source},
    )


if __name__ == "__main__":
    main()
