"""``report.py captions``: test images of a captioning run (Question 5) with the caption its
model generates (greedy, the weights of best.pt) and the true caption(s), and the run's test
scores. Fashion-MNIST scenes and synthetic COCO show their images; real COCO's images are on
the web, so their panels show the URL instead."""

from __future__ import annotations

import textwrap
from pathlib import Path

from kit.errors import UserError
from kit.finished_runs import KIND_NAMES, caption_recipe, read_run
from kit.report.common import pyplot, save_figure

CAPTION_COLS = 4


def caption_examples(run_path: str, count: int, data_dir: str | None = None) -> dict:
    """The first ``count`` test images of the run: pictures (or None), generated and true
    captions, URLs, whether the data is synthetic, and the run's summary."""
    run = read_run(run_path)
    if run.kind != "caption":
        raise UserError(f"{run.path} is {KIND_NAMES[run.kind]}; give a captioning run (Question 5)")
    if count < 1:
        raise UserError(f"--images {count}: give at least 1")
    recipe = caption_recipe()
    from kit.caption import coco, synthetic_coco

    cfg, data, model = recipe.load_run_model(run.path, data_dir)
    test = data.test
    count = min(count, len(test.inputs))
    sampled = model.sample(test.inputs[:count], recipe.sample_length(cfg, data))
    truths = [[] for _ in range(count)]
    for image, caption in zip(test.image_idxs.tolist(), test.captions):
        if image < count:
            truths[image].append(" ".join(coco.caption_words(caption, data.vocabulary)))
    if cfg.dataset == recipe.SCENES:
        pictures = test.inputs[:count].numpy()
    else:
        pictures = synthetic_coco.read_images(cfg.data_dir, "val")
        pictures = None if pictures is None else pictures[:count]
    return {
        "run": run,
        "pictures": pictures,  # (count, C, H, W) uint8, or None
        "generated": [" ".join(coco.caption_words(row, data.vocabulary)) for row in sampled],
        "truths": truths,
        "urls": (test.names or [""] * count)[:count],
        "synthetic": data.synthetic or run.synthetic,
        "summary": run.summary or {},
    }


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def draw_captions(examples: dict, out: str) -> Path:
    """A grid of test images, each titled with its generated caption (green when it equals a
    true caption, red otherwise) and its true caption(s) below."""
    plt = pyplot()
    n = len(examples["generated"])
    cols = min(CAPTION_COLS, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.9 * rows), squeeze=False, layout="constrained")  # fmt: skip
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        generated, truths = examples["generated"][k], examples["truths"][k]
        if examples["pictures"] is not None:
            image = examples["pictures"][k].transpose(1, 2, 0)
            ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)  # fmt: skip
        else:
            ax.text(0.5, 0.5, _wrap(examples["urls"][k], 28), ha="center", va="center", fontsize=7)
        right = generated in truths
        ax.set_title(
            _wrap("generated: " + generated), fontsize=8, color="green" if right else "red"
        )
        ax.set_xlabel(_wrap("true: " + " | ".join(truths[:2])), fontsize=8)
    summary = examples["summary"]
    scores = ""
    if "test_token_accuracy" in summary:
        scores = (
            f"test token accuracy {summary['test_token_accuracy']:.4f}, "
            f"BLEU-4 {summary['test_bleu4']:.4f} ({summary.get('test_images', '?')} test images)"
        )
    fig.suptitle(
        f"{examples['run'].name}: greedy captions of test images (best.pt); green = exactly a "
        f"true caption\n{scores}"
        + ("\nSYNTHETIC data (generated, not a real result)" if examples["synthetic"] else "")
    )
    return save_figure(fig, out)
