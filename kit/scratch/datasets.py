"""Datasets of Question 4 (demo_scratch.py), read from their standard files.

- ``fashion_mnist`` / ``mnist``: the four idx files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``),
  gzipped or not, directly in the folder or in torchvision's ``FashionMNIST/raw`` /
  ``MNIST/raw`` layout. Debian's ``dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist``.
- ``cifar10``: the ``cifar-10-batches-py`` folder of the official "python version"
  (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``: pickled dicts).
- ``miniplaces``: CS771's MiniPlaces folder (``kit.scratch.miniplaces``).

Every split comes back as ``(images, labels)``: uint8 (N, C, H, W) and int64 (N,). The
validation set is a fixed, seeded part of the training files (``split_train_val``); the
test files are the test set. A missing, truncated or corrupt file raises ``DatasetFileError``
with one line that names the file and says what to do.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kit.errors import DatasetFileError
from kit.scratch import miniplaces

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_DIR = "cifar-10-batches-py"
DATASETS = ("fashion_mnist", "mnist", "cifar10", "miniplaces")

CLASS_NAMES = {
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "mnist": [str(d) for d in range(10)],
    "cifar10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
    # MiniPlaces' 100 scene categories, by their number (the data set's lists give no names)
    "miniplaces": [str(c) for c in range(miniplaces.NUM_CLASSES)],
}
# (channels, side) of every image of a dataset.
IMAGE_SHAPE = {
    "fashion_mnist": (1, 28),
    "mnist": (1, 28),
    "cifar10": (3, 32),
    "miniplaces": (3, miniplaces.SIDE),
}
# Per-channel mean and std of the real training images (pixel values in [0, 1]); the models
# normalise with them inside their forward, so they take plain [0, 1] images.
MEAN_STD = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "miniplaces": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's, as CS771 uses
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_SUBFOLDERS = {"fashion_mnist": "FashionMNIST/raw", "mnist": "MNIST/raw"}
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = (*CIFAR_TRAIN_FILES, "test_batch", "batches.meta")


# ====================================================================== idx (MNIST family)

_IDX_UBYTE = 0x08  # the only element type the (Fashion-)MNIST files use


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (gzipped when its name ends in .gz) as a uint8 array of its shape.

    Images come back (N, 28, 28), labels (N,). Raises DatasetFileError naming ``path`` when the
    header is not an idx header or the file holds fewer bytes than the header announces.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetFileError(
            f"{path} is not a readable gzip file ({err}); download it again"
        ) from None
    if len(raw) < 4:
        raise DatasetFileError(f"{path} is truncated ({len(raw)} bytes); download it again")
    zero, kind, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind != _IDX_UBYTE or ndim not in (1, 3):
        raise DatasetFileError(
            f"{path} is not an idx file of uint8 images or labels (bad header); download it again"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFileError(f"{path} is truncated (incomplete header); download it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetFileError(
            f"{path} is {what} ({len(raw)} bytes, expected {expected}); download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, name: str, dataset: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder``, ``folder/raw`` or torchvision's layout."""
    subfolder = IDX_SUBFOLDERS.get(dataset, "MNIST/raw")
    for where in (folder, folder / "raw", folder / subfolder):
        for candidate in (where / name, where / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _missing_idx_message(folder: Path, name: str, dataset: str) -> str:
    where = f"{folder} has no {name}(.gz)"
    if dataset == "fashion_mnist" and folder == Path(FASHION_MNIST_DIR):
        return (
            f"{where}: install the real Fashion-MNIST with `apt-get install "
            "dataset-fashion-mnist` (Debian/Ubuntu, as root), or put the four idx files "
            "in a folder and pass --data_dir FOLDER"
        )
    return (
        f"{where}; put the four idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not) there, or pass "
        "another --data_dir"
    )


def load_idx_split(folder: str | Path, split: str, dataset: str = "fashion_mnist"):
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) of the ``train`` or ``test`` files."""
    folder = Path(folder)
    paths = []
    for name in IDX_FILES[split]:
        path = find_idx_file(folder, name, dataset)
        if path is None:
            raise DatasetFileError(_missing_idx_message(folder, name, dataset))
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3:
        raise DatasetFileError(f"{paths[0]} holds labels, not images; check the file names")
    if labels.ndim != 1:
        raise DatasetFileError(f"{paths[1]} holds images, not labels; check the file names")
    if len(images) != len(labels):
        raise DatasetFileError(
            f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels; "
            "the two files do not belong together"
        )
    if labels.size and labels.max() > 9:
        raise DatasetFileError(
            f"{paths[1]} has label {labels.max()} (expected 0-9); download it again"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ====================================================================== CIFAR-10 pickles


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    The file is a pickled dict with ``b"data"`` (N, 3072) uint8, rows = 1024 red, 1024 green,
    1024 blue values in row-major order, and ``b"labels"`` (N ints in 0-9).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(
            f"{path} not found; the folder must hold the official cifar-10-batches-py files "
            f"({', '.join(CIFAR_FILES)})"
        )
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as err:  # truncated or corrupt pickles fail in many ways; all mean this
        raise DatasetFileError(
            f"{path} is truncated or corrupt ({type(err).__name__}); download it again"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetFileError(
            f"{path} is not a CIFAR-10 batch (no data/labels); download it again"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFileError(
            f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072); "
            "download it again"
        )
    if len(labels) != len(data) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetFileError(f"{path}: labels do not match the images (count or 0-9 range)")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar_split(folder: str | Path, split: str):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of the ``train`` or ``test`` files."""
    folder = Path(folder)
    names = CIFAR_TRAIN_FILES if split == "train" else ("test_batch",)
    parts = [read_cifar_batch(folder / name) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


# ====================================================================== splits


def load_files(dataset: str, folder: str | Path, split: str):
    """The ``train`` or ``test`` files of ``dataset`` in ``folder``: (images, labels)."""
    if dataset not in DATASETS:
        raise DatasetFileError(f"unknown dataset '{dataset}'; use one of {', '.join(DATASETS)}")
    if dataset == "cifar10":
        return load_cifar_split(folder, split)
    if dataset == "miniplaces":
        return miniplaces.load_split(folder, split)
    return load_idx_split(folder, split, dataset)


def split_train_val(num_train: int, val_count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a fixed validation split of the training files.

    The same (num_train, val_count, seed) always gives the same split, whatever the
    training seed, so runs with different seeds are validated on the same images.
    """
    if not 0 < val_count < num_train:
        raise DatasetFileError(
            f"val_images {val_count} must be between 1 and {num_train - 1} "
            f"(the training files hold {num_train} images); fix it in config.yml"
        )
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_train, generator=g)
    return order[val_count:].sort().values, order[:val_count].sort().values
