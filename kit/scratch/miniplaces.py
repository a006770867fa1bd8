"""MiniPlaces (CS771 HW2's data set), read from its real folder.

MIT's MiniPlaces holds 100 scene categories of 128x128 colour JPEGs: 100,000 training and
10,000 validation images with labels (its 10,000 test images have none). The course's
``download_dataset.sh`` unpacks it as::

    data/
      images/train/a/abbey/00000001.jpg ...   images/val/00000001.jpg ...
      train.txt    one "train/a/abbey/00000001.jpg 0" per line (path under images/, class)
      val.txt      one "val/00000001.jpg 65" per line
      objects/     (object annotations, not used here)

The handout scores models on the validation images, so they are this reader's ``test``
split; the kit's own validation images come, as for every data set, from a fixed part of the
training images. A missing or malformed file raises ``DatasetFileError`` naming it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kit.errors import DatasetFileError, UserError

NUM_CLASSES = 100
SIDE = 128
LIST_FILES = {"train": "train.txt", "test": "val.txt"}  # the handout's metric is on val


def read_list(path: Path) -> list[tuple[str, int]]:
    """The (image path under images/, class) pairs of train.txt or val.txt."""
    if not path.is_file():
        raise DatasetFileError(
            f"{path} not found; MiniPlaces' folder holds images/, train.txt and val.txt "
            "(run the course's download_dataset.sh, or pass --data_dir)"
        )
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= NUM_CLASSES:
            raise DatasetFileError(
                f"{path}:{number}: expected 'IMAGE_PATH CLASS' with CLASS in 0-99, got "
                f"{line.strip()[:60]!r}; download the data set again"
            )
        pairs.append((parts[0], int(parts[1])))
    if not pairs:
        raise DatasetFileError(f"{path} lists no image; download the data set again")
    return pairs


def read_image(path: Path) -> torch.Tensor:
    """One MiniPlaces JPEG as uint8 (3, 128, 128)."""
    try:
        with Image.open(path) as file:
            pixels = np.array(file.convert("RGB"))  # (H, W, 3), writable; grey scenes become RGB
    except FileNotFoundError:
        raise DatasetFileError(f"{path} not found (listed in the split's .txt file)") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetFileError(
            f"{path} is not a readable image ({err}); download it again"
        ) from None
    if pixels.shape != (SIDE, SIDE, 3):
        raise DatasetFileError(
            f"{path} is {pixels.shape[:2]} pixels; MiniPlaces images are {SIDE}x{SIDE}"
        )
    return torch.from_numpy(pixels).permute(2, 0, 1)  # (3, 128, 128)


def load_split(folder: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 128, 128), labels int64 (N,)) of ``train`` or ``test`` (= val)."""
    if split not in LIST_FILES:
        raise UserError(f"unknown MiniPlaces split '{split}'; use train or test")
    folder = Path(folder)
    pairs = read_list(folder / LIST_FILES[split])
    images = torch.empty((len(pairs), 3, SIDE, SIDE), dtype=torch.uint8)  # (N, 3, 128, 128)

    def read_into(i: int) -> None:
        images[i] = read_image(folder / "images" / pairs[i][0])

    # Decoding 110,000 JPEGs is minutes of CPU time; PIL releases the GIL while it decodes,
    # so threads spread it over the cores.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(read_into, range(len(pairs))))
    labels = torch.tensor([label for _, label in pairs], dtype=torch.int64)
    return images, labels
