"""Synthetic COCO captioning data in exactly CS231n's file format, for quick offline checks.

THIS IS NOT COCO. When the ``coco_captioning`` folder is not available, demo_caption.py's
COCO presets (``caption_smoke``) generate a stand-in so that every part of Question 5 runs:

- the same files: ``coco2014_captions.h5`` (captions (N, 17) int32, image indices),
  ``coco2014_vocab.json`` (<NULL> = 0, <START>, <END>, <UNK>), ``{train,val}2014_vgg16_fc7.h5``
  (4096 features) and ``_pca.h5`` (512), ``{train,val}2014_urls.txt``;
- learnable: an image is a 2x2 grid of 1-4 coloured shapes (``synthetic_cifar.draw``: disc,
  square, ring, bar, cross, warm = "red" or cool = "blue"), captioned in reading order
  ("a red disc , a blue ring and a red bar"); its "VGG features" are a fixed random
  non-linear code of what is in each cell, plus noise (no network ran on anything);
- the drawn images themselves in ``synthetic_images.h5`` (not a COCO file: report.py shows
  them next to their captions); the URLs are ``synthetic://<split>2014/<index>``;
- seeded: the same sizes and seed write the same data.

Scores measured on these captions say nothing about COCO.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit.caption.coco import write_coco_files
from kit.runs import atomic_write_text
from kit.scratch.synthetic_cifar import draw

INFO_FILE = "SYNTHETIC_DATA_README.txt"
IMAGES_FILE = "synthetic_images.h5"
_RULE = "=" * 78
BANNER = (
    f"{_RULE}\n"
    "SYNTHETIC DATA: the COCO captioning files (coco_captioning) were not found, so these\n"
    "are GENERATED shape scenes with made-up features, in the real file format. Scores\n"
    "measured on them say NOTHING about COCO.\n"
    f"{_RULE}"
)
SHAPES = ("disc", "square", "ring", "bar", "cross")  # synthetic_cifar's class c: shape c % 5
COLOURS = ("red", "blue")  # ... and colour c // 5 (warm, cool)
VOCABULARY = ["<NULL>", "<START>", "<END>", "<UNK>", "a", ",", "and", *COLOURS, *SHAPES]
CAPTION_LENGTH = 17  # CS231n's
CELLS, CELL = 4, 32


def _caption(classes: list[int]) -> list[int]:
    """Token ids of "<START> a red disc , a blue ring and a red bar <END>" (padded to 17)."""
    idx = {w: i for i, w in enumerate(VOCABULARY)}
    words = []
    for j, c in enumerate(classes):
        words += ["a", COLOURS[c // 5], SHAPES[c % 5]]
        if j < len(classes) - 2:
            words.append(",")
        elif j == len(classes) - 2:
            words.append("and")
    tokens = [idx["<START>"], *(idx[w] for w in words), idx["<END>"]]
    return tokens + [idx["<NULL>"]] * (CAPTION_LENGTH - len(tokens))


def _split(count: int, rng: np.random.Generator, code: np.ndarray, pca: np.ndarray):
    """(captions, images (N, 3, 64, 64) uint8, fc7 features, PCA features) of one split."""
    cells = np.full((count, CELLS), -1)
    for i in range(count):
        k = rng.integers(1, CELLS + 1)
        cells[i, np.sort(rng.choice(CELLS, k, replace=False))] = rng.integers(0, 10, k)
    drawn = draw(np.maximum(cells, 0).reshape(-1), rng).reshape(count, CELLS, 3, CELL, CELL)
    drawn[cells < 0] = 40  # an empty cell: plain dark grey
    images = drawn.reshape(count, 2, 2, 3, CELL, CELL).transpose(0, 3, 1, 4, 2, 5)
    images = np.ascontiguousarray(images.reshape(count, 3, 2 * CELL, 2 * CELL))
    onehot = np.zeros((count, CELLS, 11), np.float32)  # 10 classes + "empty", per cell
    onehot[np.arange(count)[:, None], np.arange(CELLS), np.where(cells < 0, 10, cells)] = 1
    fc7 = np.maximum(onehot.reshape(count, -1) @ code, 0)  # (N, 4096), ReLU like fc7
    fc7 += rng.normal(0, 0.05, fc7.shape).astype(np.float32)
    captions = np.array([_caption([c for c in row if c >= 0]) for row in cells], np.int32)
    return captions, images, fc7.astype(np.float32), (fc7 @ pca).astype(np.float32)


def generation_info(train: int, val: int, seed: int) -> dict:
    return {"generator": "synthetic_coco.py", "train": train, "val": val, "seed": seed}


def read_info(folder: str | Path) -> dict | None:
    """What generated ``folder`` (None when it is not a complete synthetic set)."""
    try:
        return json.loads((Path(folder) / INFO_FILE).read_text().rsplit(_RULE, 1)[-1])
    except (OSError, ValueError):
        return None


def generate(out_dir: str | Path, train: int = 1000, val: int = 200, seed: int = 0) -> Path:
    """Write a synthetic COCO captioning folder: ``train`` and ``val`` images, one caption
    each (files written atomically; the info file last marks the set complete)."""
    import h5py

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    code = rng.normal(0, 1, (CELLS * 11, 4096)).astype(np.float32)  # the fixed "network"
    pca = np.linalg.qr(rng.normal(0, 1, (4096, 512)))[0].astype(np.float32)  # orthonormal
    made = {s: _split(n, rng, code, pca) for s, n in (("train", train), ("val", val))}
    write_coco_files(
        out,
        captions={s: m[0] for s, m in made.items()},
        image_idxs={s: np.arange(len(m[0])) for s, m in made.items()},
        features={s: m[2] for s, m in made.items()},
        idx_to_word=VOCABULARY,
        urls={s: [f"synthetic://{s}2014/{i}" for i in range(len(m[0]))] for s, m in made.items()},
        pca_features={s: m[3] for s, m in made.items()},
    )
    tmp = out / f".{IMAGES_FILE}.tmp"
    with h5py.File(tmp, "w") as f:
        for split, m in made.items():
            f.create_dataset(split, data=m[1])
    tmp.replace(out / IMAGES_FILE)
    atomic_write_text(out / INFO_FILE, f"{BANNER}\n{json.dumps(generation_info(train, val, seed))}")
    return out


def read_images(folder: str | Path, split: str) -> np.ndarray | None:
    """The drawn images (N, 3, 64, 64) uint8 of a synthetic folder's split (None elsewhere)."""
    path = Path(folder) / IMAGES_FILE
    if not path.is_file():
        return None
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[split]) if split in f else None
