"""``report.py preview``: a grid of a data set's training images with their class (PixMo:
with the point drawn), saying whether the data is synthetic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kit import finished_runs
from kit.errors import UserError
from kit.report.common import label_text, pyplot, save_figure

PREVIEW_ROWS, PREVIEW_COLS = 4, 4
PREVIEW_FIGSIZE = (10.0, 11.0)


def _default_data_dir(default: str, synthetic_dir: str, data_dir: str | None, what: str) -> Path:
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise UserError(f"--data_dir {data_dir} is not a folder; give the {what} data folder")
        return Path(data_dir)
    # the real data, else the synthetic set at the real size, else one of another size
    for folder in (default, synthetic_dir, *sorted(Path().glob(f"{synthetic_dir}-*"))):
        if Path(folder).is_dir():
            return Path(folder)
    raise UserError(
        f"no {what} data in {default}/ or {synthetic_dir}/; pass --data_dir, or run the "
        "demo's smoke preset once to generate synthetic data"
    )


def preview_examples(dataset: str, data_dir: str | None = None, scratch_dataset: str | None = None):
    """(images [(H, W, 3) or (H, W) uint8 arrays], titles, points or None, synthetic, source)."""
    count = PREVIEW_ROWS * PREVIEW_COLS
    if dataset == "flower":
        from custom_dataset import load_flower_split
        from kit.flower import recipe
        from kit.flower import synthetic as synthetic_flowers

        folder = _default_data_dir(recipe.DEFAULT_DATA_DIR, recipe.SYNTHETIC_DATA_DIR, data_dir, "flower")  # fmt: skip
        images, labels = load_flower_split(folder, "train")
        picked, seen = [], set()
        for i, label in enumerate(labels):  # one image of each of the first classes: variety
            if int(label) not in seen:
                seen.add(int(label))
                picked.append(i)
            if len(picked) == count:
                break
        synthetic = synthetic_flowers.is_synthetic(folder)
        titles = [f"class {int(labels[i])}" for i in picked]
        return [images[i] for i in picked], titles, None, synthetic, str(folder)
    if dataset == "pixmo":
        from custom_dataset import PixmoDataError, check_pixmo_example, load_pixmo_split
        from kit.pixmo import recipe
        from kit.pixmo import synthetic as synthetic_pixmo

        folder = _default_data_dir(recipe.DEFAULT_DATA_DIR, recipe.SYNTHETIC_DATA_DIR, data_dir, "PixMo")  # fmt: skip
        synthetic = synthetic_pixmo.read_info(folder) is not None
        try:
            data = load_pixmo_split(folder, "train")[:count]
            examples = [check_pixmo_example(e, "train", i, str(folder)) for i, e in enumerate(data)]
        except PixmoDataError as err:
            raise UserError(str(err)) from None
        name = synthetic_pixmo.class_name if synthetic else (lambda label: f"class {label}")
        titles = [name(label) for _, _, label in examples]
        return [e[0] for e in examples], titles, [e[1] for e in examples], synthetic, str(folder)
    recipe = finished_runs.scratch_recipe()
    cfg = recipe.ScratchConfig()
    class_names = recipe.datasets.CLASS_NAMES
    if scratch_dataset and scratch_dataset not in class_names:
        known = ", ".join(sorted(class_names))
        raise UserError(f"--dataset {scratch_dataset} is unknown; choose one of {known}")
    if scratch_dataset:
        cfg = dataclasses.replace(cfg, dataset=scratch_dataset)
    images, labels, synthetic = recipe.load_split(cfg, "train", data_dir)
    names = class_names.get(cfg.dataset)
    arrays = [im.permute(1, 2, 0).squeeze(-1).numpy() for im in images[:count]]
    titles = [label_text(names, int(label)) for label in labels[:count]]
    return arrays, titles, None, synthetic, cfg.dataset


def draw_preview(dataset: str, out: str, data_dir: str | None = None, scratch_dataset=None) -> Path:
    images, titles, points, synthetic, source = preview_examples(dataset, data_dir, scratch_dataset)
    plt = pyplot()
    fig, axes = plt.subplots(PREVIEW_ROWS, PREVIEW_COLS, figsize=PREVIEW_FIGSIZE, layout="constrained")  # fmt: skip
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(images):
            ax.axis("off")
            continue
        image = images[k]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(titles[k], fontsize=9)
        if points is not None:
            x, y = points[k]
            ax.plot([x], [y], "o", ms=9, mfc="none", mec="white", mew=2.5, label="the point")
            ax.plot([x], [y], "+", ms=9, color="red", mew=1.5)
        h, w = image.shape[:2]
        ax.set_xlabel(f"{w} x {h} px", fontsize=7)
    what = {"flower": "Flowers (Question 2)", "pixmo": "PixMo points (Question 3)"}.get(
        dataset, f"Question 4: {source}"
    )
    fig.suptitle(
        f"{what}: training images with their class"
        + (", the point drawn as a circle" if points is not None else "")
        + ("\nSYNTHETIC data (generated, not the real dataset)" if synthetic else f"\n{source}")
    )
    return save_figure(fig, out)
