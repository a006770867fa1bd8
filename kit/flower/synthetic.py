"""Synthetic flowers in exactly the real data's pickle format, for offline runs.

THIS IS NOT THE REAL DATASET. When the reduced Oxford-102 flowers are not available (no
network), the demo generates a stand-in so that every part of the kit runs:

- same files and format: ``{train,val,test}_data.pkl``, each a pickled 2-tuple (X, y), X a
  list of HWC uint8 RGB images of varying size, y a list of int labels (the test split keeps
  its labels, as the real files do); same counts (1600 / 800 / 1638) and 102 classes;
- learnable: every class is a flower "species" (number and shape of petals, petal and centre
  colours), drawn at a random position, size, rotation and brightness on a noisy background;
- seeded: the same seed writes byte-identical files;
- smaller images than the real photos (72 to 136 pixels a side instead of about 500), to
  keep the files around 130 MB; the pipeline resizes them exactly like real images.

Accuracy on synthetic flowers says nothing about accuracy on the real flowers.

    python -m kit.flower.synthetic --out synthetic-data/flower-dataset-reduced
"""

from __future__ import annotations

import argparse
import colorsys
import pickle
from pathlib import Path

import numpy as np

REAL_COUNTS = {"train": 1600, "val": 800, "test": 1638}
NUM_CLASSES = 102
SIZE_RANGE = (72, 136)  # image height and width, pixels (inclusive)
_RULE = "=" * 78
INFO_FILE = "SYNTHETIC_DATA_README.txt"  # in every generated folder: it says what it is
BANNER = (
    f"{_RULE}\n"
    "SYNTHETIC DATA: the real flower dataset was not found, so these are GENERATED flowers\n"
    "in the real file format. Accuracies measured on them say NOTHING about real flowers,\n"
    "and the run's test_flower.txt is marked synthetic: the grader refuses it.\n"
    f"{_RULE}"
)


def class_species(num_classes: int, seed: int) -> list[dict]:
    """One random 'species' per class: petal count/shape and colours (RGB in [0, 1])."""
    rng = np.random.default_rng([seed, 1])
    species = []
    for c in range(num_classes):
        hue = (c * 0.618034 + rng.uniform(0, 0.05)) % 1.0  # golden-ratio spacing of hues
        species.append(
            dict(
                petals=int(3 + c % 7),  # 3..9 petals
                sharpness=float([0.5, 1.5, 4.0][(c // 7) % 3]),  # round / normal / thin petals
                inner=float(rng.uniform(0.2, 0.6)),  # petal width at the base
                petal_rgb=np.array(
                    colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1), rng.uniform(0.7, 1))
                ),
                centre_rgb=np.array(
                    colorsys.hsv_to_rgb((hue + 0.5) % 1, rng.uniform(0.3, 1), rng.uniform(0.2, 0.9))
                ),
                centre_size=float(rng.uniform(0.12, 0.35)),
            )
        )
    return species


def draw_flower(sp: dict, rng: np.random.Generator) -> np.ndarray:
    """One (H, W, 3) uint8 image of species ``sp`` with random pose, size and lighting."""
    h, w = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Background: a green-brown gradient plus noise (foliage-ish).
    g = np.array([0.15, 0.35, 0.1]) + rng.uniform(-0.08, 0.08, 3)
    bg = g[None, None, :] * (0.7 + 0.6 * (yy / h))[..., None]
    img = bg + rng.normal(0, 0.05, (h, w, 3))
    # The flower: petal radius varies with the angle, |cos(k theta / 2)|^sharpness.
    size = min(h, w) * rng.uniform(0.3, 0.48)
    cy, cx = h / 2 + rng.uniform(-0.15, 0.15) * h, w / 2 + rng.uniform(-0.15, 0.15) * w
    r = np.hypot(yy - cy, xx - cx) / size
    theta = np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * np.pi)
    lobe = np.abs(np.cos(sp["petals"] * theta / 2)) ** sp["sharpness"]
    petal = r < sp["inner"] + (1 - sp["inner"]) * lobe
    shade = (1.1 - 0.4 * r)[..., None]  # petals darken towards their tips
    img = np.where(petal[..., None], sp["petal_rgb"] * shade, img)
    img = np.where((r < sp["centre_size"])[..., None], sp["centre_rgb"], img)
    img = img * rng.uniform(0.75, 1.2) + rng.normal(0, 0.03, (h, w, 3))  # lighting + sensor noise
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def generate_split(n: int, species: list[dict], seed: int, split_id: int):
    """(images, labels) for one split; classes are balanced, order shuffled."""
    rng = np.random.default_rng([seed, 2, split_id])
    labels = np.arange(n) % len(species)
    rng.shuffle(labels)
    images = [draw_flower(species[c], rng) for c in labels]
    return images, [int(c) for c in labels]


def generate(
    out_dir: str | Path,
    seed: int = 0,
    counts: dict | None = None,
    num_classes: int = NUM_CLASSES,
    log=print,
) -> Path:
    """Write ``{train,val,test}_data.pkl`` into ``out_dir`` (created); returns the folder.

    ``counts`` defaults to the real sizes (1600 / 800 / 1638); tests pass smaller ones.
    Each file is written to a temporary name first, so an interrupted run leaves no
    half-written split behind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = counts or REAL_COUNTS
    species = class_species(num_classes, seed)
    for split_id, split in enumerate(("train", "val", "test")):
        images, labels = generate_split(counts[split], species, seed, split_id)
        tmp = out / f".{split}_data.pkl.tmp"
        with open(tmp, "wb") as f:
            pickle.dump((images, labels), f, protocol=4)
        tmp.replace(out / f"{split}_data.pkl")
        log(f"synthetic {split}: {len(images)} images -> {out / f'{split}_data.pkl'}")
    (out / INFO_FILE).write_text(
        BANNER + f"\nGenerated by kit/flower/synthetic.py with seed {seed}.\n"
    )
    return out


def is_synthetic(folder) -> bool:
    """Whether ``folder`` holds flowers generated here (its README file says so)."""
    return (Path(folder) / INFO_FILE).is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="synthetic-data/flower-dataset-reduced")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(BANNER)
    generate(args.out, args.seed)


if __name__ == "__main__":
    main()
