"""Question 5's recipe: the settings, data, batches and model of a captioning run
(demo_caption.py).

- ``CaptionConfig``: every setting of a run (``TrainConfig``'s with this demo's defaults,
  and the data and model ones); config.yml's ``caption:`` presets override them.
- ``caption_data_dir`` / ``load_caption_data``: real Fashion-MNIST scenes
  (``kit.caption.scenes``) or a COCO folder in CS231n's format (``kit.caption.coco``; a
  SYNTHETIC one is generated when the default folder is missing and no folder was asked for).
- ``batch_sources``: the Trainer's batches (inputs, words, next words with -1 at padding).
- ``check_exercises_written``, ``build_checked_model`` / ``load_run_model``: your
  CaptioningTransformer (1.13), behind a small CNN for scenes; the unwritten exercises it
  needs are named in one line before any data is read.
- ``caption_test_set`` / ``write_summary``: greedy captions of the test set, their token
  accuracy and corpus BLEU-4 (``kit.caption.metrics``), test_captions.txt and summary.json.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import yaml
from torch import nn

from kit import cli
from kit.caption import coco, scenes, synthetic_coco
from kit.caption.metrics import corpus_bleu, token_accuracy
from kit.caption.models import CaptionModel, build_caption_model
from kit.config import ConfigError, apply_overrides
from kit.distributed import DistContext
from kit.errors import UserError
from kit.runs import BEST_FILE, CHECKPOINT_FILE, CONFIG_FILE, SYNTHETIC_MARKER, atomic_write_text
from kit.scratch import datasets
from kit.scratch.models import unwritten_exercises
from kit.trainer import TrainConfig, Trainer, load_trainable_state

SCENES, COCO = "fashion_mnist_scenes", "coco"
COCO_DIR = "coco_captioning"
SYNTHETIC_COCO_DIR = "synthetic-data/coco_captioning"
PREDICTIONS_FILE = "test_captions.txt"
SUMMARY_FILE = "summary.json"


@dataclass
class CaptionConfig(TrainConfig):
    """Every setting of a Question 5 run; config.yml presets (section ``caption``) override
    them. The defaults are the Fashion-MNIST scenes recipe."""

    # data
    dataset: Literal["fashion_mnist_scenes", "coco"] = SCENES
    data_dir: str = ""  # "" = the dataset's default folder
    val_images: int = 5000  # training images held out for validation (fixed split)
    split_seed: int = 0  # the validation split's and the fixed scenes' seed
    max_train_images: int = 0  # scenes: items to draw from (0 = all); COCO: images
    min_items: int = 1  # scenes: items per scene, uniform in [min_items, max_items]
    max_items: int = 4
    flip: bool = True  # scenes: mirror training items left-right at random
    pca_features: bool = True  # COCO: the 512 PCA features, else the 4096 fc7 ones
    max_test_images: int = 0  # the first ... test images only (scenes: items; COCO: val2014)
    synthetic_train: int = 1000  # images of a generated COCO folder
    synthetic_val: int = 200
    # model: the scene encoder (scenes only) and your CaptioningTransformer
    encoder_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    feature_dim: int = 128  # width of the scene encoder's region features
    wordvec_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    max_sample_length: int = 0  # words generated per caption (0: the longest true caption)
    # training: this demo's recipe (TrainConfig's keys, other defaults)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.002
    weight_decay: float = 0.05
    scheduler: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    warmup_epochs: float = 0.5
    epochs: int = 10
    batch_size: int = 128  # captions per optimiser step, over all processes
    eval_batch_size: int = 500  # per process


@dataclass
class CaptionSet:
    """Captions and what they describe: ``inputs`` (M, ...) scenes uint8 or features float32,
    ``captions`` (N, T) int64 with <START> (CS231n's layout), ``image_idxs`` (N,) the input of
    each caption, and the images' names (URLs) when known."""

    inputs: torch.Tensor
    captions: torch.Tensor
    image_idxs: torch.Tensor
    names: list[str] | None = None


@dataclass
class CaptionData:
    """A run's data: the vocabulary, validation and test sets, the training material (scene
    items ``train_items`` (images, labels), or COCO captions ``train``) and the feature size."""

    vocabulary: list[str]
    val: CaptionSet
    test: CaptionSet
    train: CaptionSet | None = None
    train_items: tuple[torch.Tensor, torch.Tensor] | None = None
    input_dim: int = 0
    synthetic: bool = False

    @property
    def word_to_idx(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocabulary)}


# ====================================================================== data


def caption_data_dir(
    cfg: CaptionConfig, ctx: DistContext | None = None, data_dir: str | None = None
) -> tuple[Path, bool]:
    """The folder to read and whether it is synthetic. Scenes: Fashion-MNIST (a missing
    folder is an error with the apt hint); COCO: a missing default folder is replaced by a
    generated one (loudly), a missing folder that was asked for is an error."""
    ctx = ctx or DistContext()
    if cfg.dataset == SCENES:
        path = Path(data_dir or cfg.data_dir or datasets.FASHION_MNIST_DIR)
        if not path.is_dir():
            datasets.load_idx_split(path, "train")  # its message says what to install
        return path, False
    wanted = synthetic_coco.generation_info(cfg.synthetic_train, cfg.synthetic_val, seed=0)
    path, generated = cli.choose_data_folder(
        data_dir or cfg.data_dir or COCO_DIR,
        COCO_DIR,
        SYNTHETIC_COCO_DIR,
        ctx,
        cli.synthetic_banner(synthetic_coco.BANNER, "coco", COCO_DIR),
        is_ready=lambda d: synthetic_coco.read_info(d) == wanted,
        generate=lambda d: synthetic_coco.generate(d, cfg.synthetic_train, cfg.synthetic_val),
    )
    return path, generated or synthetic_coco.read_info(path) is not None


def _fixed_scenes(images, labels, seed, cfg) -> CaptionSet:
    """Scenes using every one of these items once, in a plan fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    plan = scenes.plan_scenes(len(labels), None, gen, cfg.min_items, cfg.max_items)
    return CaptionSet(
        scenes.compose(images, plan), scenes.captions_of(plan, labels), torch.arange(len(plan))
    )


def _load_scenes(cfg: CaptionConfig, folder: Path) -> CaptionData:
    if not 1 <= cfg.min_items <= cfg.max_items <= scenes.CELLS:
        raise UserError(
            f"min_items {cfg.min_items} and max_items {cfg.max_items}: need "
            f"1 <= min_items <= max_items <= {scenes.CELLS}; fix it in config.yml"
        )
    images, labels = datasets.load_files("fashion_mnist", folder, "train")
    train_idx, val_idx = datasets.split_train_val(len(labels), cfg.val_images, cfg.split_seed)
    if cfg.max_train_images:
        train_idx = train_idx[: cfg.max_train_images]
    test_images, test_labels = datasets.load_files("fashion_mnist", folder, "test")
    if cfg.max_test_images:
        test_images, test_labels = (
            test_images[: cfg.max_test_images],
            test_labels[: cfg.max_test_images],
        )
    return CaptionData(
        vocabulary=list(scenes.VOCABULARY),
        val=_fixed_scenes(images[val_idx], labels[val_idx], cfg.split_seed + 1, cfg),
        test=_fixed_scenes(test_images, test_labels, cfg.split_seed + 2, cfg),
        train_items=(images[train_idx], labels[train_idx]),
        input_dim=cfg.feature_dim,
    )


def _captions_of_images(captions, image_idxs, keep: torch.Tensor) -> torch.Tensor:
    """Indices of the captions whose image is in ``keep`` (a bool mask over the images)."""
    return torch.nonzero(keep[image_idxs]).flatten()


def _load_coco(cfg: CaptionConfig, folder: Path, synthetic: bool) -> CaptionData:
    data = coco.load_coco_data(folder, pca_features=cfg.pca_features)
    features = torch.from_numpy(data["train_features"])
    captions = torch.from_numpy(data["train_captions"]).long()
    idxs = torch.from_numpy(data["train_image_idxs"]).long()
    # validation: a fixed, seeded part of the training IMAGES (their captions stay together)
    _, val_images = datasets.split_train_val(len(features), cfg.val_images, cfg.split_seed)
    is_val = torch.zeros(len(features), dtype=torch.bool)
    is_val[val_images] = True
    train_keep = ~is_val
    if cfg.max_train_images:
        train_keep &= torch.cumsum(train_keep.long(), 0) <= cfg.max_train_images
    urls = list(data["train_urls"])
    train = _captions_of_images(captions, idxs, train_keep)
    val = _captions_of_images(captions, idxs, is_val)
    test_features = torch.from_numpy(data["val_features"])
    test_caps = torch.from_numpy(data["val_captions"]).long()
    test_idxs = torch.from_numpy(data["val_image_idxs"]).long()
    if cfg.max_test_images:
        kept = test_idxs < cfg.max_test_images
        test_caps, test_idxs = test_caps[kept], test_idxs[kept]
        test_features = test_features[: cfg.max_test_images]
    return CaptionData(
        vocabulary=list(data["idx_to_word"]),
        train=CaptionSet(features, captions[train], idxs[train], urls),
        val=CaptionSet(features, captions[val], idxs[val], urls),
        test=CaptionSet(test_features, test_caps, test_idxs, list(data["val_urls"])),
        input_dim=features.shape[1],
        synthetic=synthetic,
    )


def load_caption_data(cfg: CaptionConfig, folder: Path, synthetic: bool = False) -> CaptionData:
    """Read and check every file (all bad-data errors happen here) and make the splits."""
    if cfg.dataset == SCENES:
        return _load_scenes(cfg, folder)
    return _load_coco(cfg, folder, synthetic)


def sample_length(cfg: CaptionConfig, data: CaptionData) -> int:
    """Words generated per caption: the preset's, else the longest caption without <START>."""
    return cfg.max_sample_length or data.test.captions.shape[1] - 1


# ====================================================================== batches


def _next_words(captions: torch.Tensor, null: int) -> torch.Tensor:
    """The words to predict, flattened to (N * (T - 1),) like the model's scores: the
    captions shifted by one, -1 at <NULL> padding (the Trainer's loss and accuracies skip
    it)."""
    targets = captions[:, 1:]
    return targets.masked_fill(targets == null, -1).flatten()


class CaptionBatches:
    """Batches ``(inputs, words, next words)`` of a fixed caption set on the device, in order
    or shuffled per epoch (seed, epoch); each process takes every world_size-th caption."""

    def __init__(self, data: CaptionSet, batch_size: int, device, *, shuffle=False, seed=0,
                 rank=0, world_size=1, null=0):  # fmt: skip
        self.inputs = data.inputs.to(device)
        self.captions, self.image_idxs = data.captions.to(device), data.image_idxs.to(device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.null = rank, world_size, null
        self.count = len(range(rank, len(self.captions), world_size))

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def batches(self, epoch: int, start: int = 0):
        n = len(self.captions)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        order = order[self.rank :: self.world_size].to(self.captions.device)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            caps = self.captions[idx]
            yield self.inputs[self.image_idxs[idx]], caps[:, :-1], _next_words(caps, self.null)

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]


class SceneBatches:
    """Training scenes drawn anew every epoch from the training items, on the device: the
    plan (which item in which cell, which items mirrored) depends on (seed, epoch) only, so a
    resumed run sees the same batches. ``scenes_per_epoch`` scenes use each item about once."""

    def __init__(self, items: tuple[torch.Tensor, torch.Tensor], cfg: CaptionConfig, device,
                 rank=0, world_size=1):  # fmt: skip
        self.images, self.labels = items[0].to(device), items[1].to(device)
        self.cfg, self.seed, self.rank, self.world_size = cfg, cfg.seed, rank, world_size
        self.per_process = max(1, cfg.batch_size // world_size)
        mean_items = (cfg.min_items + cfg.max_items) / 2
        self.steps = max(1, round(len(self.labels) / mean_items / cfg.batch_size))

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int, start: int = 0):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        count = self.steps * self.per_process * self.world_size
        plan = scenes.plan_scenes(len(self.labels), count, gen, self.cfg.min_items, self.cfg.max_items)  # fmt: skip
        flips = (torch.rand(plan.shape, generator=gen) < 0.5) & self.cfg.flip
        plan, flips = plan[self.rank :: self.world_size], flips[self.rank :: self.world_size]
        for b in range(start, self.steps):
            part = slice(b * self.per_process, (b + 1) * self.per_process)
            caps = scenes.captions_of(plan[part].to(self.labels.device), self.labels)
            images = scenes.compose(self.images, plan[part], flips[part])
            yield images, caps[:, :-1], _next_words(caps, scenes.NULL)

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]


def batch_sources(cfg: CaptionConfig, data: CaptionData, ctx: DistContext):
    """(train, val, test) batch sources; test is whole on every process."""
    null = data.word_to_idx["<NULL>"]
    shard = dict(rank=ctx.rank, world_size=ctx.world_size)
    if data.train_items is not None:
        train = SceneBatches(data.train_items, cfg, ctx.device, **shard)
    else:
        per_process = max(1, cfg.batch_size // ctx.world_size)
        train = CaptionBatches(data.train, per_process, ctx.device, shuffle=True,
                               seed=cfg.seed, null=null, **shard)  # fmt: skip
    val = CaptionBatches(data.val, cfg.eval_batch_size, ctx.device, null=null, **shard)
    test = CaptionBatches(data.test, cfg.eval_batch_size, ctx.device, null=null)
    return train, val, test


# ====================================================================== model


def build_model(cfg: CaptionConfig, data: CaptionData) -> CaptionModel:
    if cfg.wordvec_dim % cfg.num_heads or cfg.wordvec_dim % 2:
        raise UserError(
            f"wordvec_dim {cfg.wordvec_dim} must be even and divisible by num_heads "
            f"{cfg.num_heads}; change one of them in config.yml"
        )
    return build_caption_model(
        data.word_to_idx, data.input_dim, wordvec_dim=cfg.wordvec_dim, num_heads=cfg.num_heads,
        num_layers=cfg.num_layers, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
        encoder_channels=cfg.encoder_channels if cfg.dataset == SCENES else None,
    )  # fmt: skip


# The exercises of transformer_utils.py that the CaptioningTransformer is built from.
EXERCISES_NEEDED = [
    "layer_norm",
    "multi_head_attention",
    "positional_encoding",
    "decoder_layer",
    "captioning",
]


def check_exercises_written() -> None:
    """Every exercise the captioner needs that is still the release's stub, named all in one
    line before any data is read or generated (``build_checked_model`` catches the rest)."""
    unwritten = unwritten_exercises(EXERCISES_NEEDED)
    if unwritten:
        raise UserError(
            "the CaptioningTransformer is built from exercises you have not written yet: "
            f"{', '.join(unwritten)}; write them in transformer_utils.py (python -m unittest "
            "test_functions -v checks them)"
        )


def build_checked_model(cfg: CaptionConfig, data: CaptionData) -> CaptionModel:
    """``build_model`` after one forward, backward and two sampled words on two inputs: a
    stubbed exercise (NotImplementedError) becomes one line naming it, before anything is
    written."""
    model = build_model(cfg, data)
    inputs = data.val.inputs[:2]
    words = data.val.captions[:2, :3]
    try:
        model(inputs, words).sum().backward()
        model.eval()
        model.sample(inputs, 2)
    except NotImplementedError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"the {first}") from None
    model.train()
    model.zero_grad(set_to_none=True)
    return model


def config_of_run(run_dir: str | Path) -> CaptionConfig:
    run_dir = Path(run_dir)
    try:
        saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict) or saved.get("dataset") not in (SCENES, COCO):
        raise UserError(f"{run_dir} is not a Question 5 run (no demo_caption.py config.yaml)")
    known = {f.name for f in dataclasses.fields(CaptionConfig)}
    try:
        return apply_overrides(
            CaptionConfig(), {k: v for k, v in saved.items() if k in known}, str(run_dir)
        )
    except ConfigError as err:
        raise UserError(str(err)) from None


def load_run_model(run_dir: str | Path, data_dir: str | None = None, which: str = "best"):
    """(config, data, model) of a Question 5 run: the model on the CPU in eval mode with the
    weights of best.pt (``which="best"``) or checkpoint.pt (``"last"``), and its data."""
    run_dir = Path(run_dir)
    files = {"best": BEST_FILE, "last": CHECKPOINT_FILE}
    if which not in files:
        raise UserError(f"which={which!r}; use 'best' or 'last'")
    cfg = config_of_run(run_dir)
    weights = run_dir / files[which]
    if not weights.is_file():
        raise UserError(f"{weights} does not exist yet; wait for the first epoch to finish")
    folder, synthetic = caption_data_dir(cfg, data_dir=data_dir)
    data = load_caption_data(cfg, folder, synthetic)
    model = build_checked_model(cfg, data)
    state = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    load_trainable_state(model, state)
    return cfg, data, model.eval()


# ====================================================================== test metrics


@torch.no_grad()
def caption_test_set(model: nn.Module, test: CaptionSet, length: int, batch_size: int, device):
    """Greedy captions (M, length) of every test input, in order (CPU int64)."""
    model.eval()
    out = []
    for start in range(0, len(test.inputs), batch_size):
        inputs = test.inputs[start : start + batch_size].to(device)
        out.append(model.sample(inputs, length).cpu())
    return torch.cat(out) if out else torch.zeros(0, length, dtype=torch.long)


def caption_scores(sampled: torch.Tensor, test: CaptionSet, vocabulary: list[str]) -> dict:
    """Token accuracy over the test captions (each against its image's generated caption)
    and corpus BLEU-4 over the test images (each generated caption against all the true
    captions of its image)."""
    idx = {w: i for i, w in enumerate(vocabulary)}
    per_caption = sampled[test.image_idxs]
    accuracy = token_accuracy(per_caption, test.captions, idx["<NULL>"], idx["<END>"])
    references: dict[int, list[list[str]]] = {}
    for image, caption in zip(test.image_idxs.tolist(), test.captions):
        references.setdefault(image, []).append(coco.caption_words(caption, vocabulary))
    images = sorted(references)
    hypotheses = [coco.caption_words(sampled[i], vocabulary) for i in images]
    bleu = corpus_bleu(hypotheses, [references[i] for i in images])
    return {"test_token_accuracy": accuracy, "test_bleu4": bleu, "test_images": len(images)}


def write_test_captions(path: Path, sampled: torch.Tensor, vocabulary, synthetic: bool) -> None:
    """test_captions.txt: the generated caption of every test image, one per line, in order
    (the first line marks captions of synthetic data)."""
    lines = [" ".join(coco.caption_words(row, vocabulary)) for row in sampled]
    head = [SYNTHETIC_MARKER] if synthetic else []
    atomic_write_text(path, "".join(f"{line}\n" for line in head + lines))


def write_summary(trainer: Trainer, result: dict, scores: dict, cfg, synthetic, seconds) -> dict:
    """The test scores in the log, TensorBoard and summary.json (written atomically)."""
    note = " (SYNTHETIC data: not a real result)" if synthetic else ""
    trainer.log.info(
        f"test token accuracy {scores['test_token_accuracy']:.4f}, BLEU-4 "
        f"{scores['test_bleu4']:.4f} over {scores['test_images']} test images, greedy captions "
        f"of the best-validation model (epoch {result['best_epoch']})" + note
    )
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(trainer.run_dir / "tensorboard") as writer:
        for key in ("test_token_accuracy", "test_bleu4"):
            writer.add_scalar(key, scores[key], result["best_epoch"])
    summary = dict(
        preset=trainer.full_config.get("exp_name"),
        dataset=cfg.dataset,
        synthetic=synthetic,
        best_val_acc=result["best_val_acc"],  # teacher-forced token accuracy
        best_epoch=result["best_epoch"],
        **scores,
        train_seconds=round(seconds, 1),
        finished=True,
    )
    atomic_write_text(trainer.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
