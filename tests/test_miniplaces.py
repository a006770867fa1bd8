"""MiniPlaces (CS771 HW2) read from its real folder layout, on a small generated copy:
JPEGs of 128x128 under images/, train.txt and val.txt listing 'path class'."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kit.errors import DatasetFileError
from kit.scratch import miniplaces
from kit.scratch.datasets import IMAGE_SHAPE, load_files


def write_miniplaces(folder: Path, n_train=6, n_val=3, side=128):
    """A MiniPlaces folder of solid-colour JPEGs; returns {split: (paths, labels)}."""
    made = {}
    for split, n in (("train", n_train), ("val", n_val)):
        lines, labels = [], []
        for i in range(n):
            label = (7 * i + (split == "val")) % miniplaces.NUM_CLASSES
            name = f"train/a/abbey/{i:08d}.jpg" if split == "train" else f"val/{i:08d}.jpg"
            path = folder / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (side, side), (20 * i, 3 * i, 255 - 20 * i)).save(path, quality=95)
            lines.append(f"{name} {label}")
            labels.append(label)
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
        made[split] = labels
    return made


def test_reads_train_and_val_as_the_test_split(tmp_path):
    made = write_miniplaces(tmp_path)
    images, labels = load_files("miniplaces", tmp_path, "train")
    assert images.shape == (6, *[3, 128, 128]) and images.dtype == torch.uint8
    assert labels.tolist() == made["train"]
    images, labels = load_files("miniplaces", tmp_path, "test")  # the handout scores on val
    assert images.shape == (3, 3, 128, 128) and labels.tolist() == made["val"]
    assert IMAGE_SHAPE["miniplaces"] == (3, 128)
    with Image.open(tmp_path / "images" / "val/00000002.jpg") as file:
        expected = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(images[2], expected)


def test_a_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetFileError, match="train.txt not found.*download_dataset.sh"):
        load_files("miniplaces", tmp_path / "nowhere", "train")


@pytest.mark.parametrize("line", ["train/x.jpg", "train/x.jpg 100", "train/x.jpg abbey"])
def test_a_bad_list_line_is_named(tmp_path, line):
    write_miniplaces(tmp_path)
    (tmp_path / "train.txt").write_text(f"{line}\n")
    with pytest.raises(DatasetFileError, match=r"train.txt:1: expected 'IMAGE_PATH CLASS'"):
        load_files("miniplaces", tmp_path, "train")


def test_a_missing_corrupt_or_wrong_size_image_is_named(tmp_path):
    write_miniplaces(tmp_path)
    target = tmp_path / "images" / "val/00000001.jpg"
    target.unlink()
    with pytest.raises(DatasetFileError, match="00000001.jpg not found"):
        load_files("miniplaces", tmp_path, "test")
    target.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFileError, match="00000001.jpg is not a readable image"):
        load_files("miniplaces", tmp_path, "test")
    target.unlink()
    Image.new("RGB", (64, 64)).save(target)
    with pytest.raises(DatasetFileError, match=r"\(64, 64\) pixels; MiniPlaces images are 128x128"):
        load_files("miniplaces", tmp_path, "test")


def test_the_cs771_preset_builds_its_model_on_it(tmp_path):
    """cnn_miniplaces trains on this layout: the recipe splits it and its CNN takes 128 px."""
    from kit.config import load_preset
    from kit.scratch.recipe import ScratchConfig, build_model, load_splits

    write_miniplaces(tmp_path, n_train=8)
    cfg = load_preset("scratch", "cnn_miniplaces", ScratchConfig)
    cfg.val_images = 2
    splits = load_splits(cfg, tmp_path)
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [6, 2, 3]
    model = build_model(cfg, 3, 128, miniplaces.NUM_CLASSES)
    logits = model(splits["train"][0][:2].float() / 255)
    assert logits.shape == (2, miniplaces.NUM_CLASSES)
