"""Question 2's recipe: the settings, data and model of a flower run (demo_flower.py).

- ``FlowerConfig``: every setting of a run, the training ones (``TrainConfig``) and the
  model and data ones; config.yml's ``flower:`` presets override them.
- ``flower_data_dir``: the data folder, or generated synthetic flowers when none was asked
  for and the default folder is missing.
- ``flower_batch_sources``: the splits of ``custom_dataset.load_flower_splits`` resized once
  and kept as uint8 on the training device.
- ``build_model``: the preset's model (``fine_tune.ViTLinear`` / ``ViTPrompt``), and
  ``rebuild_trained_model``: the same model with a finished run's weights (report.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision.transforms.v2.functional as TF

from custom_dataset import FLOWER_CLASSES, FLOWER_SPLITS, flower_split_path, load_flower_split
from fine_tune import ViTLinear, ViTPrompt
from kit import cli
from kit.config import ConfigError, apply_overrides
from kit.device_batches import ImageBatchSource
from kit.distributed import seed_everything
from kit.errors import UserError
from kit.flower import synthetic
from kit.image_ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    normalize,
    pad_stack,
    resize_shorter_side,
    to_chw_uint8,
)
from kit.runs import BEST_FILE, CONFIG_FILE, read_predictions
from kit.trainer import TrainConfig, load_trainable_state

DEFAULT_DATA_DIR = "flower-dataset-reduced"
SYNTHETIC_DATA_DIR = "synthetic-data/flower-dataset-reduced"


@dataclass
class FlowerConfig(TrainConfig):
    """Every setting of a flower run: the training settings (TrainConfig, whose defaults are
    the original handout's SGD recipe) and the model and data ones below; config.yml presets
    override any of them."""

    # model
    encoder_name: Literal["vit_b_32", "vit_tiny_test"] = "vit_b_32"
    method: Literal["linear", "vpt", "full"] = "linear"  # linear probe / prompts / everything
    num_prompts: int = 10
    deep_prompts: bool = True  # VPT-Deep (every layer) or VPT-Shallow (first layer)
    prompt_dropout: float = 0.0
    weights: str = ""  # ViT-B/32 weights file; "" = torchvision IMAGENET1K_V1 (cache/download)
    # data
    data_dir: str = DEFAULT_DATA_DIR
    image_size: int = 224
    resize_size: int = 256
    max_train_images: int = 0  # 0 = all; smoke runs use fewer
    max_val_images: int = 0
    channels_last: bool = True  # on CUDA only
    # training: TrainConfig's defaults, but for the handout's SGD momentum
    momentum: float = 0.99


def banner() -> str:
    """The synthetic-data warning, with where the real data comes from."""
    return cli.synthetic_banner(synthetic.BANNER, "flowers", DEFAULT_DATA_DIR)


def flower_data_dir(cfg: FlowerConfig, ctx) -> tuple[Path, bool]:
    """The data folder to read, and whether it is synthetic (generated here if needed, or a
    generated folder named directly: its predictions are marked synthetic all the same)."""
    path, generated = cli.choose_data_folder(
        cfg.data_dir,
        DEFAULT_DATA_DIR,
        SYNTHETIC_DATA_DIR,
        ctx,
        banner(),
        source=cli.data_source("flowers"),
        is_ready=lambda d: all(flower_split_path(d, s).is_file() for s in FLOWER_SPLITS),
        generate=lambda d: synthetic.generate(d, seed=0),
    )
    return path, generated or synthetic.is_synthetic(path)


def build_model(cfg: FlowerConfig, log, pretrained: bool = True) -> torch.nn.Module:
    """The preset's model with ImageNet weights (``cfg.weights``, torchvision's cache or a
    download; random with one warning through ``log`` when none can be had). With
    ``pretrained=False`` the backbone is random and no weights are looked for."""
    weights = (cfg.weights or "IMAGENET1K_V1") if pretrained else None
    common = dict(
        encoder_name=cfg.encoder_name, weights=weights, image_size=cfg.image_size, log=log
    )
    try:
        if cfg.method == "vpt":
            return ViTPrompt(
                FLOWER_CLASSES,
                num_prompts=cfg.num_prompts,
                deep=cfg.deep_prompts,
                prompt_dropout=cfg.prompt_dropout,
                **common,
            )
        return ViTLinear(FLOWER_CLASSES, train_backbone=cfg.method == "full", **common)
    except Exception as err:  # a bad weights file fails in many ways; all mean the same
        if not (pretrained and cfg.weights):
            raise
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--weights {cfg.weights} is not a ViT-B/32 state dict with torchvision's names "
            f"({reason}); pass torchvision's vit_b_32-d86f8d99.pth"
        ) from None


def train_store(images, resize_size: int, device=None):
    """Resize every image once (shorter side -> resize_size) and pad them into one uint8 store.

    Returns (store (N, 3, Hmax, Wmax) uint8, sizes (N, 2)) on ``device``; random crops are cut
    from it per batch (``kit.image_ops.crop_flip``). The store is padded to the largest
    image, so a rare panorama would blow it up: the long side is centre-cropped to at most
    2 x resize_size (flower photos are far less elongated, so this changes nothing there).
    """
    resized = []
    for im in images:
        im = resize_shorter_side(to_chw_uint8(im).to(device), resize_size)  # (3, H', W')
        h, w = im.shape[1:]
        cap = 2 * resize_size
        if max(h, w) > cap:
            im = TF.center_crop(im, [min(h, cap), min(w, cap)])
        resized.append(im)
    return pad_stack(resized, device)


def eval_store(images, resize_size: int, crop: int, device=None) -> torch.Tensor:
    """The evaluation transform, applied once: resize shorter side, centre crop.
    Returns (N, 3, crop, crop) uint8 on ``device``."""
    out = torch.empty(len(images), 3, crop, crop, dtype=torch.uint8, device=device)
    for i, im in enumerate(images):
        out[i] = center_crop(resize_shorter_side(to_chw_uint8(im).to(device), resize_size), crop)
    return out


def flower_batch_sources(
    splits: dict,
    *,
    batch_size: int,
    eval_batch_size: int,
    image_size: int = 224,
    resize_size: int = 256,
    max_train_images: int = 0,
    max_val_images: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device=None,
    channels_last: bool = False,
    log=print,
):
    """(train, val, test) ``ImageBatchSource`` objects from ``load_flower_splits``' result.

    Train: random crop ``image_size`` of the image resized to ``resize_size`` + random flip.
    Validation and test: resize + centre crop (the evaluation transform; no augmentation).
    ``max_*_images`` > 0 keeps only the first images of a split (smoke runs); the test split
    is always complete, so test_flower.txt has one line per test image. The test source is
    not sharded: only rank 0 predicts.
    """
    common = dict(
        crop=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=channels_last
    )
    sources = []
    for split, limit in (("train", max_train_images), ("val", max_val_images), ("test", 0)):
        images, labels = splits[split]
        if limit > 0:
            images, labels = images[:limit], labels[:limit]
        log(f"{split}: {len(images)} images")
        labels_t = torch.from_numpy(labels)
        if split == "train":
            store, sizes = train_store(images, resize_size, device)
            src = ImageBatchSource(
                store,
                labels_t,
                sizes=sizes,
                batch_size=batch_size,
                train=True,
                seed=seed,
                rank=rank,
                world_size=world_size,
                **common,
            )
        else:
            store = eval_store(images, resize_size, image_size, device)
            shard = (rank, world_size) if split == "val" else (0, 1)
            src = ImageBatchSource(
                store,
                labels_t,
                batch_size=eval_batch_size,
                train=False,
                rank=shard[0],
                world_size=shard[1],
                **common,
            )
        sources.append(src)
    return tuple(sources)


# ====================================================================== a finished run

# How many test images the rebuilt model must classify as the run did (test_flower.txt).
CHECK_IMAGES = 16
TIE_TOLERANCE = 0.05  # logit gap, in logit standard deviations, still counted as a tie


def config_of_run(run_dir: Path, saved: dict) -> FlowerConfig:
    """The FlowerConfig a run's config.yaml (``saved``) describes."""
    keys = {k: v for k, v in saved.items() if k not in ("exp_name", "synthetic_data")}
    try:
        return apply_overrides(FlowerConfig(), keys, where=str(run_dir / CONFIG_FILE))
    except ConfigError as err:
        raise UserError(f"{err} (a run of another version of the kit?)") from None


def backbone_was_random(cfg: FlowerConfig, log_text: str) -> bool:
    """Whether the run's frozen backbone was random: the demo logs it in train.log."""
    if cfg.encoder_name != "vit_b_32":
        return True  # only ViT-B/32 has pretrained weights
    return "RANDOMLY initialised" in log_text


def rebuild_trained_model(run_dir: Path, cfg: FlowerConfig, log_text: str):
    """The run's model exactly as demo_flower.py built it, with best.pt loaded, on the CPU in
    eval mode: ``(model, note)``, the note saying where the weights came from.

    best.pt holds only what trained (prompts and head, or everything for method 'full'); the
    frozen rest is the ImageNet weights or, without them, the random initialisation that
    demo_flower drew right after ``seed_everything(cfg.seed)``, which is drawn again here.
    """
    best_path = run_dir / BEST_FILE
    if not best_path.is_file():
        raise UserError(
            f"{run_dir} has no {BEST_FILE} yet; wait until its first epoch has finished"
        )
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    notes = []
    seed_everything(cfg.seed)  # as demo_flower.train does right before build_model
    if cfg.method == "full" or backbone_was_random(cfg, log_text):
        # No file lookup or download: they draw no random numbers, so the random weights
        # are the ones the run drew.
        model = build_model(cfg, notes.append, pretrained=False)
        if cfg.method == "full":
            note = "every weight from best.pt (full fine-tuning)"
        else:
            note = f"frozen RANDOM backbone redrawn from seed {cfg.seed}, trained part from best.pt"
    else:
        model = build_model(cfg, notes.append)
        if model.backbone.weights_source.kind == "random":
            raise UserError(
                f"{run_dir} was trained on the ImageNet ViT-B/32 weights, which are not on this "
                f"machine; put {cfg.weights or 'vit_b_32-d86f8d99.pth'} where the run found it"
            )
        note = "ImageNet ViT-B/32 backbone, trained part from best.pt"
    try:
        load_trainable_state(model, state["model"])
    except (RuntimeError, KeyError) as err:
        raise UserError(f"{best_path} does not fit the model of its config.yaml ({err})") from None
    return model.eval(), note


def run_data_dir(cfg: FlowerConfig, data_dir: str | None) -> Path:
    """The flower data of a finished run: ``data_dir`` when given, else the run's own."""
    folder = Path(data_dir or cfg.data_dir)
    if not folder.is_dir():
        where = "--data_dir" if data_dir else f"the run's data folder (data_dir in {CONFIG_FILE})"
        raise UserError(
            f"{where} {folder} is not here; run from the folder you trained in or pass "
            "--data_dir with the flower data (train/val/test_data.pkl)"
        )
    return folder


def load_test_images(folder: Path, cfg: FlowerConfig, count: int):
    """The first ``count`` test images as the model saw them: resized, centre-cropped uint8
    (N, 3, S, S), with their labels (N,) (-1 where the test labels are hidden)."""
    images, labels = load_flower_split(folder, "test")
    count = min(count, len(images))
    store = eval_store(images[:count], cfg.resize_size, cfg.image_size)
    return store, torch.from_numpy(labels[:count])


def model_inputs(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images -> what the model takes: ImageNet mean/std, as the batch sources do."""
    return normalize(pixels)


def check_reproduced(run_dir: Path, model, inputs, filename: str = "test_flower.txt") -> str:
    """Compare the rebuilt model's predictions with the run's own prediction file (written
    from best.pt by the demo); refuse when they disagree: the frozen backbone then is not the
    one the run trained with. Returns a line saying what was checked."""
    path = run_dir / filename
    if not path.is_file():
        return f"not checked against {filename} (the run has not written it yet)"
    saved = torch.tensor(read_predictions(path)[0][: len(inputs)])  # skips a synthetic marker
    with torch.no_grad():
        logits = model(inputs[: len(saved)]).float()  # (K, classes)
    # A GPU run predicted under bf16 autocast: a near-tie may fall the other way here (on the
    # smoke run, 3% of the test images, all within 0.02 logit std of the top). A class whose
    # logit is that close to the top counts as agreeing; with a wrong backbone about 4% do.
    gap = logits.max(1).values - logits.gather(1, saved[:, None])[:, 0]
    agree = int((gap <= TIE_TOLERANCE * logits.std(1)).sum())
    if agree < 0.9 * len(saved):
        raise UserError(
            f"the model rebuilt from {run_dir} predicts only {agree} of {len(saved)} test "
            f"images as its {filename} does: its frozen backbone cannot be reproduced here "
            "(other weights or another torch version), so nothing is drawn"
        )
    return f"checked: {agree} of {len(saved)} test predictions agree with {filename}"
