"""CS231n's COCO captioning files (XCS231N A3, the ``coco_captioning`` folder): read them
with every check, and write files in exactly that format (tests, synthetic data).

The folder holds (CS231n's ``get_datasets.sh``):

- ``coco2014_captions.h5``: datasets ``train_captions`` (N, 17) int32 (``<START>``, the
  words, ``<END>``, then ``<NULL>`` padding), ``train_image_idxs`` (N,) int32 (the row of the
  caption's image in the feature file), ``val_captions``, ``val_image_idxs``;
- ``coco2014_vocab.json``: ``{"idx_to_word": [...], "word_to_idx": {...}}`` with
  ``<NULL>`` = 0, ``<START>``, ``<END>`` and ``<UNK>``;
- ``train2014_vgg16_fc7.h5`` / ``train2014_vgg16_fc7_pca.h5``: dataset ``features``,
  (82783, 4096) / (82783, 512) float32 (VGG-16 fc7 of every image, or its PCA); the same
  for ``val2014`` (40504 images);
- ``train2014_urls.txt`` / ``val2014_urls.txt``: one image URL per line, in feature order.

``load_coco_data`` returns CS231n's dictionary (the same keys); a missing, truncated or
inconsistent file is a ``CocoFileError``: one line that names it. h5py is imported only
here, when a COCO folder is read or written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit.errors import UserError
from kit.runs import atomic_write_text

CAPTIONS_FILE = "coco2014_captions.h5"
VOCAB_FILE = "coco2014_vocab.json"
SPLITS = ("train", "val")
SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")


class CocoFileError(UserError):
    """A COCO captioning file is missing, unreadable or inconsistent (one line, naming it)."""


def features_file(split: str, pca: bool) -> str:
    return f"{split}2014_vgg16_fc7{'_pca' if pca else ''}.h5"


def urls_file(split: str) -> str:
    return f"{split}2014_urls.txt"


def _h5py():
    try:
        import h5py
    except ModuleNotFoundError:
        raise UserError(
            "reading COCO's .h5 files needs h5py: pip install -r requirements.txt"
        ) from None
    return h5py


def _read_h5(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CocoFileError(
            f"{path} is missing; the COCO captioning folder (CS231n's coco_captioning) holds "
            f"{CAPTIONS_FILE}, {VOCAB_FILE} and the feature and URL files of train2014 and val2014"
        )
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            missing = [n for n in names if n not in f]
            if missing:
                raise CocoFileError(f"{path} has no dataset '{missing[0]}'; download it again")
            return {n: np.asarray(f[n]) for n in names}
    except CocoFileError:
        raise
    except (OSError, ValueError, KeyError) as err:  # h5py: truncated or not HDF5 at all
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CocoFileError(
            f"{path} is not a readable HDF5 file ({first}); download it again"
        ) from None


def _read_vocab(path: Path) -> tuple[list[str], dict[str, int]]:
    if not path.is_file():
        raise CocoFileError(
            f"{path} is missing; it holds the vocabulary (idx_to_word, word_to_idx)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        idx_to_word, word_to_idx = data["idx_to_word"], data["word_to_idx"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CocoFileError(
            f"{path} is not CS231n's vocabulary (a JSON object with idx_to_word and "
            f"word_to_idx: {type(err).__name__}); download it again"
        ) from None
    if not isinstance(idx_to_word, list) or not isinstance(word_to_idx, dict):
        raise CocoFileError(f"{path}: idx_to_word must be a list and word_to_idx a mapping")
    if any(word_to_idx.get(w) != i for i, w in enumerate(idx_to_word)) or len(word_to_idx) != len(
        idx_to_word
    ):
        raise CocoFileError(f"{path}: idx_to_word and word_to_idx disagree; download it again")
    missing = [t for t in SPECIAL_TOKENS if t not in word_to_idx]
    if missing or word_to_idx["<NULL>"] != 0:
        raise CocoFileError(
            f"{path}: the vocabulary needs {', '.join(SPECIAL_TOKENS)} with <NULL> = 0"
        )
    return idx_to_word, word_to_idx


def _read_urls(path: Path, count: int) -> np.ndarray:
    if not path.is_file():
        raise CocoFileError(f"{path} is missing; it lists one image URL per feature row")
    urls = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(urls) != count:
        raise CocoFileError(
            f"{path} lists {len(urls)} URLs for {count} images (feature rows); download it again"
        )
    return np.asarray(urls)


def load_coco_data(
    base_dir: str | Path, max_train: int | None = None, pca_features: bool = True, seed: int = 0
) -> dict:
    """CS231n's ``load_coco_data``: a dictionary with ``train_captions``, ``train_image_idxs``,
    ``val_captions``, ``val_image_idxs`` (int32 as stored), ``train_features``,
    ``val_features`` (float32), ``idx_to_word``, ``word_to_idx``, ``train_urls``,
    ``val_urls``. ``max_train`` keeps that many training captions, drawn without replacement
    with ``seed`` (CS231n draws with replacement from numpy's global generator).
    Every file is checked; a problem is a one-line ``CocoFileError`` naming the file."""
    base = Path(base_dir)
    if not base.is_dir():
        raise CocoFileError(f"COCO folder {base} does not exist")
    names = tuple(f"{s}_{k}" for s in SPLITS for k in ("captions", "image_idxs"))
    data = _read_h5(base / CAPTIONS_FILE, names)
    idx_to_word, word_to_idx = _read_vocab(base / VOCAB_FILE)
    for split in SPLITS:
        caps, idxs = data[f"{split}_captions"], data[f"{split}_image_idxs"]
        where = base / CAPTIONS_FILE
        if caps.ndim != 2 or not np.issubdtype(caps.dtype, np.integer):
            raise CocoFileError(f"{where}: {split}_captions must be a 2-D integer array")
        if idxs.shape != (len(caps),) or not np.issubdtype(idxs.dtype, np.integer):
            raise CocoFileError(f"{where}: {split}_image_idxs must hold one index per caption")
        if caps.size and (caps.min() < 0 or caps.max() >= len(idx_to_word)):
            raise CocoFileError(
                f"{where}: {split}_captions has word ids outside the {len(idx_to_word)} words "
                f"of {VOCAB_FILE}"
            )
        path = base / features_file(split, pca_features)
        features = _read_h5(path, ("features",))["features"]
        if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
            raise CocoFileError(f"{path}: 'features' must be a 2-D float array (images, dims)")
        if idxs.size and (idxs.min() < 0 or idxs.max() >= len(features)):
            raise CocoFileError(
                f"{where}: {split}_image_idxs points past the {len(features)} rows of {path.name}"
            )
        data[f"{split}_features"] = features.astype(np.float32, copy=False)
        data[f"{split}_urls"] = _read_urls(base / urls_file(split), len(features))
    if data["train_features"].shape[1] != data["val_features"].shape[1]:
        raise CocoFileError(
            f"{base}: the train and val features have different sizes "
            f"({data['train_features'].shape[1]} and {data['val_features'].shape[1]})"
        )
    data["idx_to_word"], data["word_to_idx"] = idx_to_word, word_to_idx
    if max_train is not None and max_train < len(data["train_captions"]):
        keep = np.random.default_rng(seed).choice(len(data["train_captions"]), max_train, False)
        keep.sort()
        data["train_captions"] = data["train_captions"][keep]
        data["train_image_idxs"] = data["train_image_idxs"][keep]
    return data


def write_coco_files(
    base_dir: str | Path,
    captions: dict[str, np.ndarray],
    image_idxs: dict[str, np.ndarray],
    features: dict[str, np.ndarray],
    idx_to_word: list[str],
    urls: dict[str, list[str]],
    pca_features: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a COCO captioning folder in CS231n's format (each file atomically): captions and
    image indices per split (int32), ``features`` per split as the fc7 file and
    ``pca_features`` (default: the same arrays) as the ``_pca`` file, the vocabulary, the
    URLs."""
    h5py = _h5py()
    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)

    def write_h5(name: str, arrays: dict[str, np.ndarray]) -> None:
        tmp = base / f".{name}.tmp"
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
        tmp.replace(base / name)

    arrays = {}
    for split in SPLITS:
        arrays[f"{split}_captions"] = np.asarray(captions[split], dtype=np.int32)
        arrays[f"{split}_image_idxs"] = np.asarray(image_idxs[split], dtype=np.int32)
    write_h5(CAPTIONS_FILE, arrays)
    pca = pca_features if pca_features is not None else features
    for split in SPLITS:
        write_h5(features_file(split, False), {"features": np.asarray(features[split], np.float32)})
        write_h5(features_file(split, True), {"features": np.asarray(pca[split], np.float32)})
        atomic_write_text(base / urls_file(split), "".join(f"{u}\n" for u in urls[split]))
    vocab = {"idx_to_word": list(idx_to_word), "word_to_idx": {w: i for i, w in enumerate(idx_to_word)}}  # fmt: skip
    atomic_write_text(base / VOCAB_FILE, json.dumps(vocab))


def caption_words(tokens, idx_to_word: list[str]) -> list[str]:
    """The words of one caption (a sequence of ids): up to its ``<END>``, without the special
    tokens (``<NULL>``, ``<START>``, ``<END>``)."""
    words = []
    for t in tokens:
        word = idx_to_word[int(t)]
        if word == "<END>":
            break
        if word not in ("<NULL>", "<START>"):
            words.append(word)
    return words


def decode_captions(captions, idx_to_word: list[str]) -> list[str]:
    """Captions (N, T) (or one (T,)) as text: the words up to <END>, joined by spaces."""
    rows = np.asarray(captions)
    rows = rows[None] if rows.ndim == 1 else rows
    return [" ".join(caption_words(row, idx_to_word)) for row in rows]
