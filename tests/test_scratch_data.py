"""Question 4's dataset readers: real Fashion-MNIST, generated files in every format, and
one-line errors naming the file for missing, truncated and corrupt files."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kit.scratch import datasets as scratch_data
from kit.scratch import synthetic_cifar
from kit.scratch.datasets import (
    DatasetFileError,
    load_cifar_split,
    load_idx_split,
    read_idx,
    split_train_val,
)

REAL_FMNIST = Path(scratch_data.FASHION_MNIST_DIR)
needs_fmnist = pytest.mark.skipif(
    not (REAL_FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed in {REAL_FMNIST} (apt-get install dataset-fashion-mnist)",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array (what the MNIST files hold)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, gz: bool, n_train=12, n_test=5, seed=0):
    """The four files with random content; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[split] = (images, labels)
        for name, array in zip(scratch_data.IDX_FILES[split], (images, labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path):
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message


@needs_fmnist
def test_real_fashion_mnist_test_split():
    images, labels = load_idx_split(REAL_FMNIST, "test")
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [1000] * 10  # the published test set is balanced
    assert 0.25 < images.float().mean().item() / 255 < 0.32  # Fashion-MNIST's mean is 0.286


@pytest.mark.parametrize("layout", ["plain", "gz", "torchvision_raw"])
def test_idx_files_in_every_layout_read_back_exactly(tmp_path, layout):
    folder = tmp_path / ("FashionMNIST/raw" if layout == "torchvision_raw" else "data")
    arrays = write_idx_set(folder, gz=layout != "plain")
    root = tmp_path if layout == "torchvision_raw" else folder
    for split in ("train", "test"):
        images, labels = load_idx_split(root, split, "fashion_mnist")
        assert images.shape == (len(arrays[split][0]), 1, 28, 28)
        assert np.array_equal(images[:, 0].numpy(), arrays[split][0])
        assert np.array_equal(labels.numpy(), arrays[split][1].astype(np.int64))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file_is_a_one_line_error_naming_it(tmp_path, gz):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()[:-100]
    if gz:
        path.unlink()
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    with pytest.raises(DatasetFileError, match="truncated") as err:
        load_idx_split(tmp_path, "train")
    assert_one_line_naming(err, path)


def test_corrupt_gzip_and_bad_header_are_one_line_errors(tmp_path):
    bad_gz = tmp_path / "x-idx3-ubyte.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate data")
    with pytest.raises(DatasetFileError) as err:
        read_idx(bad_gz)
    assert_one_line_naming(err, bad_gz)
    not_idx = tmp_path / "x-idx3-ubyte"
    not_idx.write_bytes(b"PNG\x00" + bytes(100))
    with pytest.raises(DatasetFileError, match="bad header") as err:
        read_idx(not_idx)
    assert_one_line_naming(err, not_idx)


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch_data, "FASHION_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(DatasetFileError, match="apt-get install dataset-fashion-mnist") as err:
        load_idx_split(tmp_path / "none", "train", "fashion_mnist")
    assert "\n" not in str(err.value)
    # another folder: where to put the files
    with pytest.raises(DatasetFileError, match="--data_dir"):
        load_idx_split(tmp_path, "train", "mnist")


def test_synthetic_cifar_has_the_real_format_and_is_reproducible(tmp_path):
    synthetic_cifar.generate(tmp_path / "a", per_file=30, seed=3)
    synthetic_cifar.generate(tmp_path / "b", per_file=30, seed=3)
    for name in scratch_data.CIFAR_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with open(tmp_path / "a" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # exactly how the official files are read
    assert batch[b"data"].shape == (30, 3072) and batch[b"data"].dtype == np.uint8
    assert b"SYNTHETIC" in batch[b"batch_label"]
    assert "SYNTHETIC DATA" in (tmp_path / "a" / synthetic_cifar.INFO_FILE).read_text()
    assert synthetic_cifar.read_info(tmp_path / "a") == synthetic_cifar.generation_info(30, 3)
    images, labels = load_cifar_split(tmp_path / "a", "train")
    assert images.shape == (150, 3, 32, 32) and labels.shape == (150,)
    # rows of b"data" are 1024 red, then green, then blue values: channel-first after reshape
    assert np.array_equal(images[0].numpy().reshape(-1), batch[b"data"][0])
    assert load_cifar_split(tmp_path / "a", "test")[0].shape == (30, 3, 32, 32)


def test_hand_written_cifar_batch_reads_back(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 7]}, f, protocol=2)
    images, labels = load_cifar_split(tmp_path, "test")
    assert labels.tolist() == [3, 7]
    assert images[1, 2, 0, 5].item() == data[1, 2 * 1024 + 5]  # blue plane, row 0, column 5


def test_truncated_or_missing_cifar_file_is_a_one_line_error_naming_it(tmp_path):
    synthetic_cifar.generate(tmp_path, per_file=10, seed=0)
    path = tmp_path / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetFileError, match="truncated or corrupt") as err:
        load_cifar_split(tmp_path, "train")
    assert_one_line_naming(err, path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DatasetFileError, match="not found") as err:
        load_cifar_split(tmp_path, "test")
    assert_one_line_naming(err, tmp_path / "test_batch")


def test_validation_split_is_fixed_disjoint_and_complete():
    train, val = split_train_val(100, 20, seed=5)
    again_train, again_val = split_train_val(100, 20, seed=5)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 20 and not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert not torch.equal(split_train_val(100, 20, seed=6)[1], val)
    with pytest.raises(DatasetFileError, match="val_images"):
        split_train_val(10, 10, seed=0)


def test_synthetic_cifar_of_each_size_has_its_own_folder(tmp_path, monkeypatch):
    """Presets of different sizes (scratch_smoke's 1000 per file, the full 10000) keep their
    own synthetic data: running one never regenerates the other's."""
    from kit.scratch.recipe import ScratchConfig, scratch_data_dir, synthetic_cifar_dir

    monkeypatch.chdir(tmp_path)
    assert synthetic_cifar_dir(10_000) == "synthetic-data/cifar-10-batches-py"
    small, smaller = ScratchConfig(synthetic_per_file=20), ScratchConfig(synthetic_per_file=10)
    first, synthetic = scratch_data_dir(small)
    assert synthetic and first == Path(synthetic_cifar_dir(20))
    stamp = (first / "test_batch").stat().st_mtime_ns
    second, _ = scratch_data_dir(smaller)
    assert second != first and (second / "test_batch").is_file()
    again, _ = scratch_data_dir(small)
    assert again == first and (first / "test_batch").stat().st_mtime_ns == stamp  # not redone
