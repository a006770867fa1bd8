"""Datasets for Question 2 (flowers) and Question 3 (PixMo points).

Both read the real pickle formats of the assignment's data. Images are decoded and resized
once, kept as uint8 tensors, and augmented per batch on the training device, so the GPU
never waits on Python image code.
"""

# ============================== Question 2: flowers ==============================
# BEGIN flower section
import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from gpu_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageBatchSource,
    center_crop,
    pad_stack,
    resize_shorter_side,
    to_chw_uint8,
)
from training_utils import UserError

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


def train_store(images, resize_size: int, device=None):
    """Resize every image once (shorter side -> resize_size) and pad them into one uint8 store.

    Returns (store (N, 3, Hmax, Wmax) uint8, sizes (N, 2)) on ``device``; random crops are cut
    from it per batch (``gpu_transforms.crop_flip``). The store is padded to the largest
    image, so a rare panorama would blow it up: the long side is centre-cropped to at most
    2 x resize_size (flower photos are far less elongated, so this changes nothing there).
    """
    resized = []
    for im in images:
        im = resize_shorter_side(to_chw_uint8(im).to(device), resize_size)  # (3, H', W')
        h, w = im.shape[1:]
        cap = 2 * resize_size
        if max(h, w) > cap:
            im = TF.center_crop(im, [min(h, cap), min(w, cap)])
        resized.append(im)
    return pad_stack(resized, device)


def eval_store(images, resize_size: int, crop: int, device=None) -> torch.Tensor:
    """The evaluation transform, applied once: resize shorter side, centre crop.
    Returns (N, 3, crop, crop) uint8 on ``device``."""
    out = torch.empty(len(images), 3, crop, crop, dtype=torch.uint8, device=device)
    for i, im in enumerate(images):
        out[i] = center_crop(resize_shorter_side(to_chw_uint8(im).to(device), resize_size), crop)
    return out


def load_flower_splits(data_dir, num_classes: int = FLOWER_CLASSES) -> dict:
    """All three splits, checked: {'train': (images, labels), 'val': ..., 'test': ...}."""
    return {split: load_flower_split(data_dir, split, num_classes) for split in FLOWER_SPLITS}


def flower_batch_sources(
    splits: dict,
    *,
    batch_size: int,
    eval_batch_size: int,
    image_size: int = 224,
    resize_size: int = 256,
    max_train_images: int = 0,
    max_val_images: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device=None,
    channels_last: bool = False,
    log=print,
):
    """(train, val, test) ``ImageBatchSource`` objects from ``load_flower_splits``' result.

    Train: random crop ``image_size`` of the image resized to ``resize_size`` + random flip.
    Validation and test: resize + centre crop (the evaluation transform; no augmentation).
    ``max_*_images`` > 0 keeps only the first images of a split (smoke runs); the test split
    is always complete, so test_flower.txt has one line per test image. The test source is
    not sharded: only rank 0 predicts.
    """
    common = dict(
        crop=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=channels_last
    )
    sources = []
    for split, limit in (("train", max_train_images), ("val", max_val_images), ("test", 0)):
        images, labels = splits[split]
        if limit > 0:
            images, labels = images[:limit], labels[:limit]
        log(f"{split}: {len(images)} images")
        labels_t = torch.from_numpy(labels)
        if split == "train":
            store, sizes = train_store(images, resize_size, device)
            src = ImageBatchSource(
                store,
                labels_t,
                sizes=sizes,
                batch_size=batch_size,
                train=True,
                seed=seed,
                rank=rank,
                world_size=world_size,
                **common,
            )
        else:
            store = eval_store(images, resize_size, image_size, device)
            shard = (rank, world_size) if split == "val" else (0, 1)
            src = ImageBatchSource(
                store,
                labels_t,
                batch_size=eval_batch_size,
                train=False,
                rank=shard[0],
                world_size=shard[1],
                **common,
            )
        sources.append(src)
    return tuple(sources)


class FlowerPILDataset(torch.utils.data.Dataset):
    """The original kit's per-image pipeline (PIL image -> torchvision transform), kept as the
    baseline of ``benchmarks/bench_flower_pipeline.py``. Returns (transform(image), label)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


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

from gpu_transforms import normalize  # noqa: E402, F811

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
    (the statistics of the ResNet-34 weights); ``gpu_transforms.normalize`` does the work."""
    return normalize(images, channels_last=channels_last)


class PixmoPointsDataset(torch.utils.data.Dataset):
    """PixMo points: each item is an image, the class of the object under a point, the point.

    Every image is padded to a centred square and resized to ``size`` ONCE, here, and kept as
    uint8; the point goes through the same padding and scaling. Augmentation (crop, scale,
    flip) then runs per batch on the training device with ``augment_pixmo_batch``; see
    ``pixmo_batches`` for the fast path. ``__getitem__`` is there for plain DataLoader use.

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


class PixmoBatchSource:
    """A Trainer batch source over PixMo tensors kept on the training device.

    Yields ``(images, points, labels)``: images (B, 3, S, S) float normalised, points (B, 2)
    float pixels of the S x S image, labels (B,) int64 (-1 where unknown). No DataLoader and
    no Python per-pixel work: each step indexes the uint8 store and augments (training) and
    normalises the whole batch on the device.

    Training: each epoch has a plan (order, crop/scale/flip parameters of every example) drawn
    on the CPU from ``seed`` and the epoch number, so a resumed run sees exactly the same
    batches. The job's batch is ``batch_size`` examples; under DDP each of the ``world_size``
    ranks takes its own equal slice, and an epoch's final incomplete batch is dropped.
    Evaluation: every example exactly once, in order, in contiguous chunks across ranks.

    Args:
        images: (N, 3, S, S) uint8; points: (N, 2) float; labels: (N,) int64.
        batch_size, train, seed, rank, world_size: as above.
        augment: options for ``sample_augmentation`` (min_scale, max_aspect, flip_p, margin;
            ``{}`` for its defaults), or None to train on the stored images as they are.
        channels_last: return images in channels_last memory format (faster convs on GPUs).
        device: where the store lives (default: where ``images`` already are).
    """

    def __init__(
        self,
        images,
        points,
        labels,
        *,
        batch_size,
        train,
        seed=0,
        rank=0,
        world_size=1,
        augment=None,
        channels_last=False,
        device=None,
    ):
        if train and batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must divide among {world_size} processes")
        device = images.device if device is None else torch.device(device)
        self.images, self.points = images.to(device), points.to(device).float()
        self.labels, self.device = labels.to(device), device
        self.points_cpu = points.detach().float().cpu()  # for the per-epoch plan
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self.augment = None if augment is None else dict(augment)
        self.channels_last = channels_last

    @property
    def num_samples(self):
        return len(self.labels)

    def __len__(self):
        """Batches per epoch on this rank."""
        if self.train:
            return self.num_samples // self.batch_size
        return -(-len(self._eval_indices()) // self.batch_size)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])

    def _eval_indices(self):
        return torch.arange(self.num_samples).tensor_split(self.world_size)[self.rank]

    def epoch_plan(self, epoch):
        """Order and augmentation parameters of every example for one epoch (CPU, seeded)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        if self.augment is None:
            return {"order": order}
        size = self.images.shape[-1]
        params = sample_augmentation(self.points_cpu[order], size, generator, **self.augment)
        return {"order": order, **params}

    def _finish(self, images, points, labels):
        return normalize_pixmo(images, self.channels_last), points, labels

    def batches(self, epoch=0, start=0):
        """Yield this rank's batches of ``epoch``, starting at batch number ``start``."""
        if not self.train:
            index = self._eval_indices().to(self.device)
            for b in range(start, len(self)):
                sel = index[b * self.batch_size : (b + 1) * self.batch_size]
                yield self._finish(self.images[sel], self.points[sel], self.labels[sel])
            return
        # One host-to-device copy per epoch: no per-batch synchronisation with the GPU.
        plan = {k: v.to(self.device) for k, v in self.epoch_plan(epoch).items()}
        per_rank = self.batch_size // self.world_size
        for b in range(start, len(self)):
            low = b * self.batch_size + self.rank * per_rank
            part = slice(low, low + per_rank)
            sel = plan["order"][part]
            images, points = self.images[sel], self.points[sel]
            if self.augment is not None:
                images, points = apply_augmentation(
                    images,
                    points,
                    plan["scales"][part],
                    plan["corners"][part],
                    plan["flip"][part],
                )
            yield self._finish(images, points, self.labels[sel])

    def __iter__(self):
        return self.batches(0)


# END pixmo section
