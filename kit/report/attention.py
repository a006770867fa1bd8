"""``report.py attention``: where a ViT looks. For a flower run (Question 2) or a Question 4
vit / diff_vit run, on test images: the [CLS] token's attention to every patch for each head
of the last layer, their mean, the head mean of every layer and, with ``--rollout``, the
attention rollout computed by the student's own ``transformer_utils.attention_rollout``
(DINO's and vit-explain's figures). Prompt tokens (VPT) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import transformer_utils
from kit.errors import UserError
from kit.finished_runs import KIND_NAMES, TrainedModel, load_trained_model, read_run, test_images
from kit.report.common import label_text, pyplot, save_figure, show_image, wrap_title


@dataclass
class VitView:
    """A run's ViT and what the figures need to know about its tokens."""

    trained: TrainedModel
    num_prompts: int  # prompt tokens between CLS and the patches (VPT), else 0
    grid: int  # patches per side

    def attentions(self, inputs):
        """(logits (B, C), list of L attention maps (B, H, T, T)) of the model."""
        model = self.trained.model
        with torch.no_grad():
            if self.trained.run.kind == "scratch" or hasattr(model, "prompts"):
                return model(inputs, return_attention=True)
            features, attentions = model.backbone(inputs, None, True)  # ViTLinear: its backbone's
            return model.head(features), attentions


def load_vit(run, data_dir: str | None = None, check: bool | None = True) -> VitView:
    """The ViT of a flower or Question 4 run (UserError for any other run or model)."""
    if run.kind == "pixmo":
        raise UserError(
            f"{run.path} is {KIND_NAMES['pixmo']}; attention maps and position embeddings need "
            "a ViT run: a flower run (Question 2) or a Question 4 vit / diff_vit run"
        )
    trained = load_trained_model(run, data_dir, check=check)
    model, cfg = trained.model, trained.cfg
    if run.kind == "scratch":
        if cfg.model == "simple_vit":
            raise UserError(
                f"{run.path} trained a simple_vit, which has no CLS token to draw the attention "
                "of; give a vit or diff_vit run"
            )
        if cfg.model not in ("vit", "diff_vit"):
            raise UserError(
                f"{run.path} trained a '{cfg.model}', not a transformer; give a vit or diff_vit run"
            )
        return VitView(trained, 0, int(model.patch_grid))
    prompts = model.prompts.shape[1] if hasattr(model, "prompts") else 0
    return VitView(trained, prompts, cfg.image_size // model.backbone.patch_size)


def rollout_of(attentions, num_prompts: int):
    """Attention rollout of the CLS token over the patches, by the kit's own
    ``transformer_utils.attention_rollout`` (your exercise 1.10), over the whole sequence
    [CLS, prompts, patches]; the prompt columns are then dropped. Returns (B, N)."""
    try:
        _, cls_map = transformer_utils.attention_rollout(attentions)
    except NotImplementedError:
        raise UserError(
            "transformer_utils.attention_rollout is not implemented yet (exercise 1.10); "
            "write it, or drop --rollout"
        ) from None
    return cls_map[:, num_prompts:]  # cls_map has no CLS column: prompts come first


def attention_maps(
    run_dir: str | Path,
    images: int = 4,
    data_dir: str | None = None,
    rollout: bool = False,
    check: bool = True,
) -> dict:
    """The maps the ``attention`` figure draws, for the first ``images`` test images.

    Returns a dict of tensors (G = patches per side, H heads, L layers):
        images (B, C, S, S) uint8, labels (B,), preds (B,), grid G, num_prompts P,
        attentions: the model's L maps (B, H, T, T), T = 1 + P + G*G,
        last_heads (B, H, G, G): CLS -> patch attention of each head of the last layer,
        last_mean (B, G, G): their mean, layer_means (B, L, G, G): the head mean per layer,
        rollout (B, G, G) or None, run (the Run), note (where the weights came from),
        class_names (list or None), synthetic (bool).
    """
    run = read_run(run_dir)
    vit = load_vit(run, data_dir, check=check)
    if images < 1:
        raise UserError(f"--images {images}: give at least 1")
    test = test_images(vit.trained, images, data_dir)
    pixels, labels, inputs = test.pixels, test.labels, test.inputs
    logits, attentions = vit.attentions(inputs)
    attentions = [a.float() for a in attentions]
    g, p = vit.grid, vit.num_prompts
    cls_to_patches = [a[:, :, 0, 1 + p :] for a in attentions]  # (B, H, G*G) per layer
    n_patches = cls_to_patches[0].shape[-1]
    if n_patches != g * g:
        raise UserError(f"the model's attention covers {n_patches} patches, not {g}x{g}")
    b = inputs.shape[0]
    last_heads = cls_to_patches[-1].reshape(b, -1, g, g)
    maps = dict(
        images=pixels,
        labels=labels,
        preds=logits.argmax(1),
        grid=g,
        num_prompts=p,
        attentions=attentions,
        last_heads=last_heads,
        last_mean=last_heads.mean(1),
        layer_means=torch.stack([m.mean(1) for m in cls_to_patches], 1).reshape(b, -1, g, g),
        rollout=rollout_of(attentions, p).reshape(b, g, g) if rollout else None,
        run=run,
        note=vit.trained.note,
        class_names=test.class_names,
        synthetic=test.synthetic,
    )
    return maps


def _overlay(ax, image, heat, title):
    """The image with a G x G map over it, one flat square per patch, scaled to its maximum."""
    show_image(ax, image)
    h, w = image.shape[1:]
    heat = heat / heat.max().clamp_min(1e-12)
    mappable = ax.imshow(
        heat.numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
        extent=(0, w, h, 0), interpolation="nearest",
    )  # fmt: skip
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable


def attention_layout(heads: int, layers: int) -> tuple[int, int]:
    """Columns of the figure: row 1 image + heads + mean, row 2 rollout/blank + layers."""
    return max(heads + 2, layers + 1), 2


def attention_figsize(images: int, heads: int, layers: int) -> tuple[float, float]:
    cols, rows_per_image = attention_layout(heads, layers)
    return (max(1.35 * cols + 1.0, 8.0), 1.6 * rows_per_image * images + 1.0)


def draw_attention(maps: dict, out: str) -> Path:
    plt = pyplot()
    b, heads = maps["last_heads"].shape[:2]
    layers = maps["layer_means"].shape[1]
    cols, per = attention_layout(heads, layers)
    fig, axes = plt.subplots(
        per * b,
        cols,
        figsize=attention_figsize(b, heads, layers),
        layout="constrained",
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    mappable = None
    names = maps["class_names"]
    for i in range(b):
        image = maps["images"][i]
        top, bottom = axes[per * i], axes[per * i + 1]
        ax = top[0]
        ax.axis("on")
        show_image(ax, image)
        ax.set_xticks([])
        ax.set_yticks([])
        truth = label_text(names, int(maps["labels"][i]))
        guess = label_text(names, int(maps["preds"][i]))
        ax.set_title(f"test image {i + 1}\nclass {truth}, predicted {guess}", fontsize=8)
        for h in range(heads):
            top[1 + h].axis("on")
            mappable = _overlay(top[1 + h], image, maps["last_heads"][i, h], f"head {h + 1}")  # fmt: skip
        top[heads + 1].axis("on")
        _overlay(top[heads + 1], image, maps["last_mean"][i], "mean of heads")
        if maps["rollout"] is not None:
            bottom[0].axis("on")
            _overlay(bottom[0], image, maps["rollout"][i], "rollout")
        for layer in range(layers):
            bottom[1 + layer].axis("on")
            _overlay(bottom[1 + layer], image, maps["layer_means"][i, layer], f"layer {layer + 1}")  # fmt: skip
    fig.colorbar(
        mappable,
        ax=axes,
        shrink=min(0.5, 4.0 / fig.get_figheight()),
        label="[CLS] attention / its maximum",
    )
    run = maps["run"]
    prompts = f", {maps['num_prompts']} prompt tokens left out" if maps["num_prompts"] else ""
    title = (
        f"[CLS]-to-patch attention of run {run.name} ({maps['grid']}x{maps['grid']} patches"
        f"{prompts}; test images)" + (", SYNTHETIC DATA" if maps["synthetic"] else "")
    )
    rows = (
        "First row of each image: every head of the last layer, and their mean. Second row: "
        + ("the attention rollout, then " if maps["rollout"] is not None else "")
        + "the mean over the heads of each layer."
    )
    fig.suptitle(wrap_title(fig, f"{title}. {rows}\n{maps['note']}", 10), fontsize=10)
    return save_figure(fig, out)
