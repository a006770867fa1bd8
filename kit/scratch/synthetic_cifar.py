"""Synthetic CIFAR-10 in exactly the real files' format, for offline runs of Question 4.

THIS IS NOT THE REAL DATASET. When ``cifar-10-batches-py`` is not available (no network),
demo_scratch.py generates a stand-in so that every part of Question 4 runs:

- same files and format: ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` (pickled dicts
  with ``b"data"`` (N, 3072) uint8 and ``b"labels"``) and ``batches.meta``; 32x32 RGB, 10
  classes; by default the real counts (10,000 images per file);
- learnable: class c is a shape (disc, square, ring, bar, cross: c % 5) in a warm or cool
  colour (c // 5) at a random place, size and brightness on a noisy background;
- seeded: the same seed and size write byte-identical files.

Accuracy on these images says nothing about accuracy on the real CIFAR-10.

    python -m kit.scratch.synthetic_cifar --out synthetic-data/cifar-10-batches-py
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np

from kit.runs import atomic_write_bytes, atomic_write_text
from kit.scratch.datasets import CIFAR_TRAIN_FILES, CLASS_NAMES

REAL_PER_FILE = 10_000
INFO_FILE = "SYNTHETIC_DATA_README.txt"
_RULE = "=" * 78
BANNER = (
    f"{_RULE}\n"
    "SYNTHETIC DATA: the real CIFAR-10 (cifar-10-batches-py) was not found, so these are\n"
    "GENERATED shapes in the real file format. Accuracies measured on them say NOTHING\n"
    "about CIFAR-10.\n"
    f"{_RULE}"
)


def draw(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images (N, 3, 32, 32) uint8 of the classes ``labels`` (vectorised over N)."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    cy, cx = rng.uniform(10, 22, (2, n, 1, 1)).astype(np.float32)
    size = rng.uniform(5, 10, (n, 1, 1)).astype(np.float32)
    dy, dx = (yy - cy) / size, (xx - cx) / size  # (N, 32, 32) in shape units
    shape = labels % 5
    masks = np.stack(
        [
            dy**2 + dx**2 < 1,  # disc
            np.maximum(abs(dy), abs(dx)) < 0.85,  # square
            abs(np.sqrt(dy**2 + dx**2) - 0.75) < 0.25,  # ring
            (abs(dy) < 0.3) & (abs(dx) < 1.2),  # bar
            ((abs(dy) < 0.25) | (abs(dx) < 0.25)) & (np.maximum(abs(dy), abs(dx)) < 1),  # cross
        ]
    )[shape, np.arange(n)]  # (N, 32, 32)
    warm = (labels // 5 == 0)[:, None]
    hue = np.where(warm, [0.9, 0.35, 0.15], [0.15, 0.45, 0.9]) + rng.uniform(-0.15, 0.15, (n, 3))
    background = rng.uniform(0.1, 0.6, (n, 3)) * 0.6
    colour = np.where(masks[:, None], hue[:, :, None, None], background[:, :, None, None])
    images = colour * rng.uniform(0.7, 1.2, (n, 1, 1, 1)) + rng.normal(0, 0.06, colour.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8)


def _batch_file(labels: np.ndarray, rng: np.random.Generator, name: str) -> bytes:
    images = np.concatenate([draw(labels[i : i + 2000], rng) for i in range(0, len(labels), 2000)])
    batch = {
        b"batch_label": f"SYNTHETIC {name} (not CIFAR-10)".encode(),
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(len(labels), -1),
        b"filenames": [f"synthetic_{name}_{i:05d}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)


def generation_info(per_file: int, seed: int) -> dict:
    return {"generator": "synthetic_cifar.py", "per_file": per_file, "seed": seed}


def read_info(folder: str | Path) -> dict | None:
    """What generated ``folder`` (None when it is not a complete synthetic set)."""
    path = Path(folder) / INFO_FILE
    try:
        return json.loads(path.read_text().rsplit(_RULE, 1)[-1])
    except (OSError, ValueError):
        return None


def generate(out_dir: str | Path, per_file: int = REAL_PER_FILE, seed: int = 0) -> Path:
    """Write the six batch files and batches.meta (each atomically) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)  # marks the set complete only at the end
    for file_id, name in enumerate((*CIFAR_TRAIN_FILES, "test_batch")):
        rng = np.random.default_rng([seed, file_id])
        labels = rng.permutation(np.arange(per_file) % 10)
        atomic_write_bytes(out / name, _batch_file(labels, rng, name))
    meta = {
        b"num_cases_per_batch": per_file,
        b"label_names": [c.encode() for c in CLASS_NAMES["cifar10"]],
        b"num_vis": 3072,
    }
    atomic_write_bytes(out / "batches.meta", pickle.dumps(meta, protocol=2))
    atomic_write_text(out / INFO_FILE, f"{BANNER}\n{json.dumps(generation_info(per_file, seed))}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="synthetic-data/cifar-10-batches-py")
    parser.add_argument("--per_file", type=int, default=REAL_PER_FILE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(BANNER)
    generate(args.out, args.per_file, args.seed)


if __name__ == "__main__":
    main()
