"""The pixmo_demo preset end to end: our pipeline vs the original one, in one process.

    python -m benchmarks.bench_pixmo_pipeline                 # GPU: 20 epochs at PixMo size
    python -m benchmarks.bench_pixmo_pipeline --original_epochs 5   # the original timed for 5
                                                              # epochs, projected to 20
    python -m benchmarks.bench_pixmo_pipeline --tiny          # CPU check that it runs (default
                                                              # without a GPU)

--synthetic_dir DIR keeps the generated data for the next run; --json PATH writes the summary.

Both sides train the same model from the same initial weights with the pixmo_demo recipe
(the point-blind baseline ``PixMoModel``: ResNet-34 with layer4 trainable, 2x2 tokens, 2-layer
encoder; Adam lr 3e-4, batch 16, 20 epochs, validation every epoch).

- Ours: every image padded to a square and resized ONCE into a uint8 tensor kept on the
  device, batches indexed and normalised on the device (``PixmoBatchSource``), the frozen
  BatchNorms folded into their convolutions, channels_last and bf16 autocast for the ResNet
  on CUDA, the shared Trainer (checkpoints included).
- Original: a Dataset that pads each PIL image to a square and runs Resize(224)/ToTensor/
  Normalize in a DataLoader with 4 workers, batch 16, fp32, a plain training loop.

Data: --data_dir (the real PixMo points) or, by default, synthetic PixMo of the real counts
and image sizes (2500/500 images of 300-700 px) generated into a temporary folder (generation
is not timed). Target on an H100: ours at least 10x faster (the original takes about 1.6 min
there, so about 10 s). CPU figures are NOT the target; --tiny only checks that the code runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image

from benchmarks.pipeline_timing import add_arguments, fit_ours, run_and_report, run_original_loop
from custom_dataset import PixmoPointsDataset, check_pixmo_example, load_pixmo_split
from kit.config import load_preset
from kit.image_ops import IMAGENET_MEAN, IMAGENET_STD
from kit.pixmo import synthetic as synthetic_pixmo
from kit.pixmo.recipe import PixmoBatchSource, PixmoConfig
from kit.trainer import TrainConfig
from model import PixMoModel

ROOT = Path(__file__).resolve().parents[1]


def recipe(epochs: int, tiny: bool) -> PixmoConfig:
    cfg = dataclasses.replace(load_preset("pixmo", "pixmo_demo", PixmoConfig), epochs=epochs)
    if tiny:
        cfg = dataclasses.replace(cfg, image_size=64)
    return cfg


def make_model(cfg: PixmoConfig) -> PixMoModel:
    torch.manual_seed(0)  # the same initial weights on both sides
    return PixMoModel(
        20, cfg.tokens_side, cfg.num_layers, cfg.num_heads, cfg.head_hidden, cfg.dropout,
        cfg.trainable_from,
    )  # fmt: skip


def run_ours(data: dict, cfg: PixmoConfig, device, compile_model: bool, compile_mode: str) -> dict:
    start = time.perf_counter()
    splits = {
        s: PixmoPointsDataset(data[s], s, cfg.image_size, device=device) for s in ("train", "val")
    }  # pad + resize once, on the device
    channels_last = device.type == "cuda"
    model = make_model(cfg).to(device)
    if cfg.fuse_frozen_bn:
        model.backbone.fuse_frozen_batch_norm()  # same outputs, fewer kernels
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def source(split, **kwargs):
        d = splits[split]
        return PixmoBatchSource(
            d.images, d.points, d.labels, device=device, channels_last=channels_last, **kwargs
        )

    train = source("train", batch_size=cfg.batch_size, train=True, seed=cfg.seed)
    val = source("val", batch_size=cfg.eval_batch_size, train=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    prep = time.perf_counter() - start
    tcfg = dataclasses.replace(
        TrainConfig.from_config(cfg), compile=compile_model, compile_mode=compile_mode
    )
    return fit_ours(model, train, val, tcfg, device, start, prep)


class OriginalPixmoDataset(torch.utils.data.Dataset):
    """What the original kit did per item, every epoch: PIL pad-to-square, then transforms
    (Resize to size x size, ToTensor, Normalize) in the DataLoader workers."""

    def __init__(self, examples, split, size):
        self.items = [check_pixmo_example(e, split, i) for i, e in enumerate(examples)]
        self.size = size
        self.transform = T.Compose(
            [T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image, (x, y), label = self.items[index]
        pil = Image.fromarray(image)
        side = max(pil.size)
        square = Image.new("RGB", (side, side))  # black padding, image centred
        left, top = (side - pil.size[0]) // 2, (side - pil.size[1]) // 2
        square.paste(pil, (left, top))
        point = torch.tensor([x + left, y + top]) * (self.size / side)
        return self.transform(square), label, point


def run_original(data: dict, cfg: PixmoConfig, device, workers: int, epochs: int) -> dict:
    """The original kit's pipeline: PIL transforms in DataLoader workers, Adam, fp32."""
    loader = dict(
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0
    )
    train = torch.utils.data.DataLoader(
        OriginalPixmoDataset(data["train"], "train", cfg.image_size),
        batch_size=cfg.batch_size,
        shuffle=True,
        **loader,
    )
    val = torch.utils.data.DataLoader(
        OriginalPixmoDataset(data["val"], "val", cfg.image_size),
        batch_size=cfg.batch_size,
        **loader,
    )
    model = make_model(cfg).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    # batch = (images, labels, points); the model takes (images, points)
    return run_original_loop(model, train, val, opt, epochs, device, lambda b: ((b[0], b[2]), b[1]))


def load_data(data_dir, tiny: bool, tmp: str, synthetic_dir=None) -> tuple[dict, str]:
    """The train and val examples and where they came from: ``data_dir``, or synthetic data
    generated into ``synthetic_dir`` (reused when it holds the same generation) or ``tmp``."""
    if data_dir is None:
        sizes, sides = ((64, 32, 8), (60, 120)) if tiny else ((2500, 500, 500), (300, 700))
        data_dir = Path(synthetic_dir or Path(tmp) / "pixmo_data")
        info = synthetic_pixmo.read_info(data_dir)
        if info == synthetic_pixmo.generation_info(sizes, *sides, seed=0):
            print(f"reusing the synthetic PixMo data in {data_dir}")
        elif info is None and any(data_dir.glob("*_data.pkl")):
            sys.exit(f"error: {data_dir} holds data not made by kit/pixmo/synthetic.py; give it as "
                     "--data_dir, or choose an empty --synthetic_dir")  # fmt: skip
        else:
            synthetic_pixmo.generate(data_dir, sizes, *sides, seed=0, log=print)
        source = f"SYNTHETIC {sizes[0]}/{sizes[1]} images of {sides[0]}-{sides[1]} px"
    else:
        source = str(data_dir)
    data = {s: load_pixmo_split(data_dir, s) for s in ("train", "val")}
    if tiny:
        data = {"train": data["train"][:64], "val": data["val"][:32]}
    return data, source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, full_epochs=20, workers=4)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    epochs = args.epochs or (1 if tiny else 20)
    cfg = recipe(epochs, tiny)
    with tempfile.TemporaryDirectory() as tmp:
        data, source = load_data(args.data_dir, tiny, tmp, args.synthetic_dir)
    print(
        f"device {device}; pixmo_demo recipe, {epochs} epochs, {len(data['train'])} train / "
        f"{len(data['val'])} val images ({source}); {cfg.image_size} px inputs"
    )
    return run_and_report(
        args,
        epochs,
        lambda: run_ours(data, cfg, device, args.compile, args.compile_mode),
        lambda original_epochs: run_original(data, cfg, device, args.workers, original_epochs),
        "target on an H100: >= 10x, ours about 10 s",
        {"device": str(device), "tiny": tiny, "epochs": epochs, "data": source},
    )


if __name__ == "__main__":
    main()
