"""Datasets for Question 2 (flowers) and Question 3 (PixMo points).

Both read the real pickle formats of the assignment's data and check every example, so a
bad file stops the demo with one line naming it. The demos keep the images as uint8 on the
training device and augment whole batches there (``kit/flower/recipe.py``,
``kit/pixmo/recipe.py``), so the GPU never waits on Python image code; the PixMo geometry
below (pad, resize, crop, flip: the point always moves with its pixels) is what they use.
"""

# ============================== Question 2: flowers ==============================
# BEGIN flower section
import pickle
from pathlib import Path

import numpy as np

from kit.errors import UserError

FLOWER_CLASSES = 102
FLOWER_SPLITS = ("train", "val", "test")


def flower_split_path(data_dir, split: str) -> Path:
    """``<data_dir>/<split>_data.pkl`` (split in train / val / test)."""
    return Path(data_dir) / f"{split}_data.pkl"


def load_flower_split(data_dir, split: str, num_classes: int = FLOWER_CLASSES):
    """Read one split of the reduced Oxford-102 flowers in the assignment's pickle format.

    The file holds a 2-tuple ``(X, y)``: X a sequence of HWC uint8 RGB images (varying sizes),
    y the integer labels in [0, num_classes) (-1 is accepted for an unlabelled test set).
    Returns (list of (H, W, 3) uint8 arrays, (N,) int64 labels). Every problem raises a
    ``UserError`` naming the file and saying what to do.
    """
    path = flower_split_path(data_dir, split)
    if not path.is_file():
        raise UserError(f"{path} not found; the flower data folder needs train/val/test_data.pkl")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as err:  # any unpickling failure means the same thing to the user
        raise UserError(
            f"{path} is not a readable pickle ({type(err).__name__}); re-download or regenerate it"
        ) from None
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise UserError(
            f"{path} must hold a pickled (images, labels) 2-tuple, got {type(data).__name__}"
        )
    images, labels = data
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{path}: the labels are not integers") from None
    if len(images) != len(labels):
        raise UserError(f"{path}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise UserError(f"{path} holds no images")
    images = list(images)
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 2:
            im = images[i] = np.repeat(im[:, :, None], 3, axis=2)  # a greyscale photo: (H, W, 3)
        if not (
            isinstance(im, np.ndarray)
            and im.dtype == np.uint8
            and im.ndim == 3
            and im.shape[2] == 3
        ):
            got = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
            raise UserError(f"{path}: image {i} must be an (H, W, 3) uint8 RGB array, got {got}")
        if min(im.shape[:2]) < 8:
            raise UserError(f"{path}: image {i} is only {im.shape[0]}x{im.shape[1]} pixels")
    bad = (labels < -1) | (labels >= num_classes) | ((labels == -1) & (split != "test"))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{path}: label {labels[i]} of image {i} is outside 0..{num_classes - 1}; "
            "check that the file belongs to the 102-class flower set"
        )
    return images, labels


def load_flower_splits(data_dir, num_classes: int = FLOWER_CLASSES) -> dict:
    """All three splits, checked: {'train': (images, labels), 'val': ..., 'test': ...}."""
    return {split: load_flower_split(data_dir, split, num_classes) for split in FLOWER_SPLITS}


# END flower section

# ============================== Question 3: PixMo points ==============================
# BEGIN pixmo section
# This section's own imports (F811: the flower section may import the same modules), so
# the two sections can be edited independently.
import math  # noqa: E402, F811
import pickle  # noqa: E402, F811
from pathlib import Path  # noqa: E402, F811

import numpy as np  # noqa: E402, F811
import torch  # noqa: E402, F811
import torch.nn.functional as F  # noqa: E402, F811

from kit.image_ops import normalize  # noqa: E402, F811

PIXMO_NUM_CLASSES = 20
PIXMO_SPLITS = ("train", "val", "test")

# Point convention used everywhere below: (x, y) in pixels with the origin at the image's
# top-left CORNER, so pixel (row i, column j) covers [j, j+1) x [i, i+1) and its centre is
# (j + 0.5, i + 0.5). With this convention padding is a shift, resizing an image of side L to
# side S multiplies by S / L, and a horizontal flip is x -> S - x: exactly what happens to the
# pixels, so the point always stays on the same content.


class PixmoDataError(ValueError):
    """Bad PixMo data; the message is one line naming the file/example and what to do."""


def load_pixmo_split(data_dir, split):
    """Read ``<data_dir>/<split>_data.pkl``: a list of dicts with image, point, optional label."""
    if split not in PIXMO_SPLITS:
        raise PixmoDataError(
            f"unknown PixMo split '{split}'; valid splits: {', '.join(PIXMO_SPLITS)}"
        )
    path = Path(data_dir) / f"{split}_data.pkl"
    if not path.is_file():
        raise PixmoDataError(
            f"{path} not found; --data_dir must hold train_data.pkl, val_data.pkl and test_data.pkl"
        )
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as err:  # any unpickling failure means the file is damaged
        raise PixmoDataError(
            f"{path} is not a readable pickle ({type(err).__name__}); download or regenerate it"
        ) from None
    if not isinstance(data, (list, tuple)) or not all(isinstance(d, dict) for d in data):
        raise PixmoDataError(
            f"{path} must hold a list of dicts with keys image, point, label; "
            f"found {type(data).__name__}"
        )
    return list(data)


def check_pixmo_example(example, split, index, where="PixMo data"):
    """Validate one example; return ``(image (H, W, 3) uint8, (x, y) floats, label int)``."""
    at = f"{where}, {split} example {index}"
    if "image" not in example or "point" not in example:
        raise PixmoDataError(f"{at} lacks the 'image' or 'point' key; every example needs both")
    image = np.asarray(example["image"])
    if image.ndim == 2:  # greyscale: repeat to RGB
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise PixmoDataError(
            f"{at}: image must be an (H, W, 3) uint8 array, got shape {image.shape} {image.dtype}"
        )
    image = image[:, :, :3]  # drop an alpha channel if present
    height, width = image.shape[:2]
    try:
        x, y = (float(v) for v in example["point"])
    except (TypeError, ValueError):
        raise PixmoDataError(f"{at}: point must be (x, y), got {example['point']!r}") from None
    if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
        raise PixmoDataError(
            f"{at}: point ({x:g}, {y:g}) is outside its {width}x{height} image "
            f"(need 0 <= x <= {width}, 0 <= y <= {height}); fix or remove that example"
        )
    label = example.get("label", -1)
    label = -1 if label is None else label
    if isinstance(label, (bool, float)) or not isinstance(label, (int, np.integer)):
        raise PixmoDataError(f"{at}: label must be an integer, got {label!r}")
    label = int(label)
    if label == -1 and split != "test":
        raise PixmoDataError(f"{at} has no label; only the test split may omit labels")
    if not -1 <= label < PIXMO_NUM_CLASSES:
        raise PixmoDataError(
            f"{at}: label {label} is outside 0..{PIXMO_NUM_CLASSES - 1} (or -1 for unknown)"
        )
    return image, (x, y), label


def pad_and_resize(image, point, size, device=None):
    """Pad an image to a centred square, resize it, and move its point the same way.

    Args:
        image: (H, W, 3) uint8 numpy array.
        point: (x, y) in the image's pixels (corner-origin convention above).
        size: output side S.
        device: where to do the work and keep the result (a GPU does it far faster).
    Returns:
        (3, S, S) uint8 tensor and a (2,) float32 CPU tensor: the point in output pixels.
    """
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)  # (3, H, W)
    square = torch.zeros(3, side, side, dtype=torch.uint8, device=device)  # black padding
    square[:, top : top + height, left : left + width] = pixels
    if side != size:
        # Antialiased bilinear with align_corners=False scales corner-origin coordinates by
        # exactly size / side, the same factor applied to the point below.
        resized = F.interpolate(
            square[None].float(),
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
        square = resized.round().clamp(0, 255).to(torch.uint8)
    scale = size / side
    moved = torch.tensor([(point[0] + left) * scale, (point[1] + top) * scale], dtype=torch.float32)
    return square, moved


def sample_augmentation(
    points, size, generator=None, min_scale=0.6, max_aspect=4 / 3, flip_p=0.5, margin=0.1
):
    """Random crop/scale/flip parameters for a batch, chosen so the crop keeps the point.

    Args:
        points: (B, 2) float, (x, y) in pixels of the S x S images.
        size: S.
        generator: optional torch.Generator on the points' device (for reproducibility).
        min_scale: smallest crop side as a fraction of S (1.0 disables cropping).
        max_aspect: crops have width/height in [1/max_aspect, max_aspect].
        flip_p: probability of a horizontal flip.
        margin: fraction of the crop side kept between the point and the crop border
            (where the image border allows it).
    Returns:
        dict with scales (B, 2) crop width/height as fractions of S, corners (B, 2) crop
        top-left (x, y) in pixels, flip (B,) bool.
    """
    batch, device = points.shape[0], points.device

    def uniform(low, high):  # (B,) uniform samples
        return low + (high - low) * torch.rand(batch, device=device, generator=generator)

    # Area scale s^2 and aspect ratio r -> crop side fractions (s*sqrt(r), s/sqrt(r)).
    scale = uniform(min_scale, 1.0)
    log_aspect = uniform(-math.log(max_aspect), math.log(max_aspect))
    scale_x = (scale * torch.exp(log_aspect / 2)).clamp(max=1.0)
    scale_y = (scale * torch.exp(-log_aspect / 2)).clamp(max=1.0)
    scales = torch.stack([scale_x, scale_y], dim=1)  # (B, 2)
    crop = scales * size  # (B, 2) crop width, height in pixels

    # Corner range that keeps the point within [margin, 1 - margin] of the crop, clamped so
    # the crop stays inside the image (low <= high always holds since margin <= 0.5).
    low = torch.minimum((points - (1 - margin) * crop).clamp(min=0), size - crop)
    high = torch.minimum((points - margin * crop).clamp(min=0), size - crop)
    corners = low + (high - low) * torch.rand(batch, 2, device=device, generator=generator)
    flip = torch.rand(batch, device=device, generator=generator) < flip_p
    return {"scales": scales, "corners": corners, "flip": flip}


def apply_augmentation(images, points, scales, corners, flip):
    """Crop, rescale and flip images AND points with the same parameters (one affine map each).

    ``affine_grid`` + ``grid_sample`` (bilinear) do the crop, the resize back to S x S and the
    flip of the whole batch in a few kernels on the images' device.

    Args:
        images: (B, 3, S, S) uint8 or float; points: (B, 2) (x, y) pixels.
        scales, corners, flip: from ``sample_augmentation``.
    Returns:
        (B, 3, S, S) float32 images with values 0..255, and (B, 2) float32 moved points.
    """
    batch, _, size, _ = images.shape
    sign_x = 1.0 - 2.0 * flip.float()  # -1 where flipped
    # affine_grid maps output coords u in [-1, 1] (u = 2x/S - 1, align_corners=False) to input
    # coords: u_in = scale * sign * u_out + shift, with shift = 2 * corner / S + scale - 1.
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = scales[:, 0] * sign_x
    theta[:, 1, 1] = scales[:, 1]
    theta[:, :, 2] = 2 * corners / size + scales - 1
    grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)

    # The point, in output pixels: remove the crop offset, undo the scale, then mirror.
    moved = (points - corners) / scales  # (B, 2)
    moved_x = torch.where(flip, size - moved[:, 0], moved[:, 0])
    return out, torch.stack([moved_x, moved[:, 1]], dim=1)


def augment_pixmo_batch(images, points, generator=None, **options):
    """Random crop + rescale + horizontal flip of a batch, applied to pixels and points alike.

    ``options`` go to ``sample_augmentation`` (min_scale, max_aspect, flip_p, margin).
    Returns (B, 3, S, S) float32 images with values 0..255 and the (B, 2) moved points.
    """
    params = sample_augmentation(points, images.shape[-1], generator, **options)
    return apply_augmentation(images, points, **params)


def normalize_pixmo(images, channels_last=False):
    """(B, 3, S, S) uint8 or 0..255 float -> float32 normalised with the ImageNet mean/std
    (the statistics of the ResNet-34 weights); ``kit.image_ops.normalize`` does the work."""
    return normalize(images, channels_last=channels_last)


class PixmoPointsDataset(torch.utils.data.Dataset):
    """PixMo points: each item is an image, the class of the object under a point, the point.

    Every image is padded to a centred square and resized to ``size`` ONCE, here, and kept as
    uint8; the point goes through the same padding and scaling. Augmentation (crop, scale,
    flip) then runs per batch on the training device with ``augment_pixmo_batch``; see
    ``kit.pixmo.recipe.PixmoBatchSource`` for the fast path. ``__getitem__`` is there for plain DataLoader use.

    Args:
        data: a directory holding ``<split>_data.pkl``, or the already loaded list of dicts
            ``{"image": (H, W, 3) uint8, "point": (x, y) in pixels, "label": int}`` (the label
            may be missing on test: -1).
        split: "train", "val" or "test"; training items are augmented in ``__getitem__``.
        size: side S of the square images the model sees.

    Attributes:
        images: (N, 3, S, S) uint8.  points: (N, 2) float32, in S x S pixels.  labels: (N,) int64.
    """

    def __init__(self, data, split="train", size=224, *, where="PixMo data", device=None):
        # where: how error messages name the data (e.g. the pickle file a list came from).
        # device: where images are padded/resized and kept (a GPU: once, in about a second).
        if isinstance(data, (str, Path)):
            where = str(Path(data) / f"{split}_data.pkl")
            data = load_pixmo_split(data, split)
        if len(data) == 0:
            raise PixmoDataError(f"{where}: the {split} split is empty")
        self.split, self.size, self.augment = split, size, split == "train"
        checked = [check_pixmo_example(e, split, i, where) for i, e in enumerate(data)]
        images, points = [], []
        for image, point, _ in checked:  # validate everything before the slow part
            square, moved = pad_and_resize(image, point, size, device)
            images.append(square)
            points.append(moved)
        self.images = torch.stack(images)  # (N, 3, S, S) uint8
        self.points = torch.stack(points).to(self.images.device)  # (N, 2)
        labels = [label for _, _, label in checked]
        self.labels = torch.tensor(labels, dtype=torch.int64, device=self.images.device)  # (N,)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        """Return ``(image (3, S, S) float32 normalised, label int, point (2,) float32)``."""
        image, point = self.images[index : index + 1], self.points[index : index + 1]
        if self.augment:
            image, point = augment_pixmo_batch(image, point)
        return normalize_pixmo(image)[0], int(self.labels[index]), point[0]


# END pixmo section
