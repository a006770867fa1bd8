"""``report.py posemb``: the cosine similarity of each patch's learned position embedding
with every other one, on the patch grid (the ViT paper, Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kit.errors import UserError
from kit.finished_runs import load_trained_model, read_run
from kit.report.attention import load_vit
from kit.report.common import pyplot, save_figure, wrap_title


def learned_position_embeddings(run_dir: str | Path, data_dir: str | None = None) -> dict:
    """The run's learned position embeddings on the patch grid: {'embeddings' (G, G, D),
    'similarity' (G, G, G, G) cosine similarity of patch (i, j) with patch (k, l), 'run',
    'note'}. One-line UserError when the model has nothing learned to show."""
    run = read_run(run_dir)
    if run.kind == "scratch":
        kind = run.config.get("pos_embedding")
        why = {
            "sinusoidal": "fixed sine and cosine waves of the position: nothing is learned",
            "none": "no position embedding at all: the model sees a bag of patches",
        }
        if kind in why:
            raise UserError(
                f"{run.path} uses pos_embedding '{kind}', {why[kind]}; give a run with "
                "learned1d or learned2d"
            )
    if run.kind == "scratch" and run.config.get("model") == "simple_vit":
        # no CLS token, so no attention figure (load_vit refuses it), but learned positions
        trained = load_trained_model(run, data_dir, check=None)
    else:
        vit = load_vit(run, data_dir, check=None)
        trained = vit.trained
    with torch.no_grad():
        if run.kind == "scratch":
            pe = trained.model.learned_position_embeddings()
            if pe is None:
                raise UserError(f"{run.path}: its model has no learned position embeddings")
            note = f"pos_embedding: {run.config.get('pos_embedding')}, learned in this run"
        else:
            pos = vit.trained.model.backbone.encoder.pos_embedding  # (1, 1 + G*G, D), CLS first
            pe = pos[0, 1:].reshape(vit.grid, vit.grid, -1)
            from kit.flower.recipe import backbone_was_random

            cfg = vit.trained.cfg
            if cfg.method == "full":
                note = "learned in ImageNet pre-training, fine-tuned in this run"
            elif backbone_was_random(cfg, run.log_text):
                note = (
                    "RANDOM, never trained (frozen random backbone): no structure to expect; "
                    "a run with the ImageNet weights shows learned ones"
                )
            else:
                note = "learned in ImageNet pre-training (frozen in this run)"
        g = pe.shape[0]
        flat = F.normalize(pe.reshape(g * g, -1).float(), dim=1)
        similarity = (flat @ flat.T).reshape(g, g, g, g)
    return dict(embeddings=pe, similarity=similarity, run=run, note=note + f"; {trained.note}")


def posemb_figsize(grid: int) -> tuple[float, float]:
    side = min(max(1.1 * grid, 6.5), 11.0)
    return (side + 1.6, side + 1.4)


def draw_posemb(emb: dict, out: str) -> Path:
    plt = pyplot()
    sim = emb["similarity"]
    g = sim.shape[0]
    fig, axes = plt.subplots(g, g, figsize=posemb_figsize(g), layout="constrained", squeeze=False)
    mappable = None
    for i in range(g):
        for j in range(g):
            ax = axes[i][j]
            mappable = ax.imshow(sim[i, j].numpy(), cmap="viridis", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == g - 1:
                ax.set_xlabel(str(j + 1), fontsize=8)
            if j == 0:
                ax.set_ylabel(str(i + 1), fontsize=8)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.colorbar(mappable, ax=axes, shrink=0.6, label="cosine similarity")
    title = (
        f"Position embedding similarity of run {emb['run'].name}: each small map compares the "
        f"embedding of one patch with those of all {g}x{g} patches.\n{emb['note']}"
    )
    fig.suptitle(wrap_title(fig, title, 9), fontsize=9)
    return save_figure(fig, out)
