"""PixMo data path: the point follows the pixels; bad data gives one clear error."""

import pickle

import numpy as np
import pytest
import torch
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)

from custom_dataset import PixmoDataError, PixmoPointsDataset, augment_pixmo_batch, pad_and_resize
from kit.pixmo.recipe import PixmoBatchSource
from kit.pixmo.synthetic import generate, make_example


def blob_image(height, width, point, sigma):
    """Black (H, W, 3) uint8 image with a white Gaussian blob centred exactly on ``point``."""
    cols = np.arange(width) + 0.5  # pixel centres (corner-origin convention)
    rows = np.arange(height) + 0.5
    d2 = (cols[None, :] - point[0]) ** 2 + (rows[:, None] - point[1]) ** 2
    blob = 255 * np.exp(-d2 / (2 * sigma**2))
    return np.repeat(blob[:, :, None], 3, axis=2).round().astype(np.uint8)


def brightest(image):
    """(3, S, S) tensor -> (x, y) centre of its brightest pixel."""
    total = image.float().sum(0)
    row, col = divmod(int(total.argmax()), total.shape[1])
    return torch.tensor([col + 0.5, row + 0.5])


def blob_centre(image):
    """(3, S, S) tensor -> (x, y) intensity-weighted centre of the pixels above half maximum
    (sub-pixel: unlike the brightest pixel it does not snap to the pixel grid)."""
    total = image.float().sum(0)
    total = total - total.min()
    weight = torch.where(total >= 0.5 * total.max(), total, torch.zeros_like(total))
    rows = torch.arange(total.shape[0]) + 0.5
    cols = torch.arange(total.shape[1]) + 0.5
    x = (weight.sum(0) * cols).sum() / weight.sum()
    y = (weight.sum(1) * rows).sum() / weight.sum()
    return torch.stack([x, y])


def assert_on_point(image, point, what, pixel_tolerance=1.0):
    """The blob's sub-pixel centre is within 0.5 px of the point and its brightest pixel within
    ``pixel_tolerance`` (more than 1 px only where augmentation upsampled the pixel grid)."""
    centre_error = (blob_centre(image) - point).abs().max().item()
    assert centre_error <= 0.5, f"{what}: blob centre {blob_centre(image)} vs point {point}"
    pixel_error = (brightest(image) - point).abs().max().item()
    assert pixel_error <= pixel_tolerance, f"{what}: brightest {brightest(image)} vs {point}"


SHAPES = [(300, 700), (700, 300), (450, 450), (97, 31)]  # wide, tall, square, tiny odd


@pytest.mark.parametrize("height,width", SHAPES)
def test_point_follows_padding_and_resizing(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    size = 64
    sigma = max(height, width) / size  # about one output pixel wide
    for _ in range(5):
        # Keep the whole blob inside the image, else clipping biases its centre.
        point = (
            rng.uniform(3 * sigma, width - 3 * sigma),
            rng.uniform(3 * sigma, height - 3 * sigma),
        )
        square, moved = pad_and_resize(blob_image(height, width, point, sigma), point, size)
        assert square.shape == (3, size, size) and square.dtype == torch.uint8
        assert_on_point(square, moved, f"pad+resize {height}x{width} point {point}")


@pytest.mark.parametrize("height,width", SHAPES[:3])
def test_point_follows_every_augmentation(height, width):
    """Crop, scale (with aspect change) and flip, batched, many random draws."""
    rng = np.random.default_rng(7)
    size = 64
    squares, points = [], []
    for _ in range(16):
        point = (rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height)
        image = blob_image(height, width, point, max(height, width) / size)
        square, moved = pad_and_resize(image, point, size)
        squares.append(square)
        points.append(moved)
    images, points = torch.stack(squares), torch.stack(points)
    generator = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(4):
        out, moved = augment_pixmo_batch(
            images, points, generator=generator, min_scale=0.35, flip_p=0.5
        )
        assert out.shape == images.shape and out.dtype == torch.float32
        # Upsampling by 1/scale spreads one stored pixel over 1/scale output pixels, so the
        # brightest pixel may sit up to half of that away; the blob centre stays within 0.5 px.
        for i in range(len(out)):
            assert_on_point(out[i], moved[i], f"augmentation of example {i}", 0.5 / 0.35 + 0.5)
        flips += int((moved[:, 0] - points[:, 0]).abs().gt(5).sum())
    assert flips > 0  # the draws did move points (flips and crops really happened)


def test_each_augmentation_alone():
    """A flip mirrors x; a centred crop of half the image doubles offsets from the centre."""
    size = 64
    point = torch.tensor([[20.25, 40.5]])
    image = blob_image(size, size, point[0].tolist(), 1.0)
    images = torch.from_numpy(image).permute(2, 0, 1)[None]
    from custom_dataset import apply_augmentation

    flipped, moved = apply_augmentation(
        images, point, torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([True])
    )
    assert torch.allclose(moved, torch.tensor([[size - 20.25, 40.5]]))
    assert_on_point(flipped[0], moved[0], "flip")
    zoomed, moved = apply_augmentation(
        images, point, torch.full((1, 2), 0.5), torch.full((1, 2), 16.0), torch.tensor([False])
    )
    assert torch.allclose(moved, torch.tensor([[2 * (20.25 - 16), 2 * (40.5 - 16)]]))
    assert_on_point(zoomed[0], moved[0], "crop+scale")


def test_dataset_and_batch_source_keep_the_point():
    rng = np.random.default_rng(3)
    data = []
    for _ in range(12):
        height, width = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        point = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height)
        image = blob_image(height, width, point, max(height, width) / 48)
        data.append({"image": image, "point": point, "label": int(rng.integers(20))})
    train = PixmoPointsDataset(data, split="train", size=48)
    image, label, point = train[5]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert isinstance(label, int) and label == data[5]["label"] and point.shape == (2,)
    assert_on_point(image, point, "dataset __getitem__ (train, augmented)")

    source = PixmoBatchSource(
        train.images,
        train.points,
        train.labels,
        batch_size=4,
        train=True,
        seed=1,
        augment={"min_scale": 0.5},
    )
    assert len(source) == 3
    for epoch in range(2):
        for images, points, labels in source.batches(epoch):
            assert images.shape == (4, 3, 48, 48) and labels.shape == (4,)
            for i in range(4):
                assert_on_point(images[i], points[i], f"batch source epoch {epoch}")
    first = [b[1] for b in source.batches(1)]
    again = [b[1] for b in source.batches(1, start=1)]
    assert torch.equal(first[1], again[0])  # a resumed epoch sees the same batches

    evaluation = PixmoBatchSource(
        train.images, train.points, train.labels, batch_size=5, train=False
    )
    seen = torch.cat([labels for _, _, labels in evaluation.batches()])
    assert torch.equal(seen, train.labels)  # every example once, in order


def test_synthetic_data_is_in_the_real_format(tmp_path):
    generate(tmp_path, sizes=(6, 3, 4), min_side=60, max_side=120, seed=5)
    train = pickle.loads((tmp_path / "train_data.pkl").read_bytes())
    test = pickle.loads((tmp_path / "test_data.pkl").read_bytes())
    assert isinstance(train, list) and len(train) == 6 and len(test) == 4
    for example in train:
        image = example["image"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert 60 <= max(image.shape[:2]) <= 120
        x, y = example["point"]
        assert 0 <= x <= image.shape[1] and 0 <= y <= image.shape[0]
        assert 0 <= example["label"] < 20
    assert all("label" not in example for example in test)
    labels = (tmp_path / "test_labels.txt").read_text().split()
    assert len(labels) == 4
    dataset = PixmoPointsDataset(tmp_path, split="test", size=32)
    assert dataset.labels.tolist() == [-1] * 4
    again = tmp_path / "again"
    generate(again, sizes=(6, 3, 4), min_side=60, max_side=120, seed=5)
    assert (again / "train_data.pkl").read_bytes() == (tmp_path / "train_data.pkl").read_bytes()


def test_synthetic_label_is_the_object_under_the_point():
    """The pixel under the point has the label's colour; at least 3 classes per image."""
    from kit.pixmo.synthetic import COLOURS

    rng = np.random.default_rng(0)
    for _ in range(20):
        example, label = make_example(rng, 120, 240)
        x, y = example["point"]
        pixel = example["image"][int(y), int(x)].astype(float)
        colours = np.array(list(COLOURS.values()), float)
        nearest = int(np.argmin(((colours - pixel) ** 2).sum(1)))
        assert nearest == label % len(COLOURS)


@pytest.mark.parametrize(
    "example,split,needle",
    [
        (
            {"image": np.zeros((10, 20, 3), np.uint8), "point": (25, 3), "label": 1},
            "val",
            "outside",
        ),
        (
            {"image": np.zeros((10, 20, 3), np.uint8), "point": (5, -1), "label": 1},
            "val",
            "outside",
        ),
        ({"image": np.zeros((10, 20, 3), np.uint8), "point": (5, 5)}, "train", "no label"),
        (
            {"image": np.zeros((10, 20, 3), np.uint8), "point": (5, 5), "label": 20},
            "val",
            "label 20",
        ),
        ({"image": np.zeros((10, 20), np.float32), "point": (5, 5), "label": 2}, "val", "uint8"),
        ({"image": np.zeros((10, 20, 3), np.uint8), "label": 2}, "val", "'point'"),
    ],
)
def test_bad_examples_name_split_and_index(example, split, needle):
    good = {"image": np.zeros((8, 8, 3), np.uint8), "point": (1, 1), "label": 0}
    with pytest.raises(PixmoDataError) as info:
        PixmoPointsDataset([good, good, example], split=split, size=16)
    message = str(info.value)
    assert "\n" not in message and needle in message
    assert f"{split} example 2" in message


def test_bad_files(tmp_path):
    with pytest.raises(PixmoDataError, match="train_data.pkl not found"):
        PixmoPointsDataset(tmp_path, split="train")
    (tmp_path / "val_data.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(PixmoDataError, match="not a readable pickle"):
        PixmoPointsDataset(tmp_path, split="val")
    (tmp_path / "test_data.pkl").write_bytes(pickle.dumps({"image": 1}))
    with pytest.raises(PixmoDataError, match="list of dicts"):
        PixmoPointsDataset(tmp_path, split="test")
