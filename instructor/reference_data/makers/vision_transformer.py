"""Cases and known mistakes of 1.10 attention rollout and 1.11 VisionTransformer."""

import torch

import transformer_utils as tu  # the reference solution
from kit.exercise_checks import runners

from .random_inputs import _gen, _randn, _random_state

# ---------------------------------------------------------------------------
# 1.10 Attention rollout
# ---------------------------------------------------------------------------


def _rollout_variant(attentions, kind):
    rollout = None
    for attn in attentions:
        a = attn.amax(dim=1) if kind == "max_heads" else attn.mean(dim=1)
        if kind != "no_identity":
            a = a + torch.eye(a.shape[-1])
        if kind != "no_renorm":
            a = a / a.sum(-1, keepdim=True)
        if rollout is None:
            rollout = a
        else:
            rollout = rollout @ a if kind == "wrong_order" else a @ rollout
    cls_map = rollout[:, 1:, 0] if kind == "column" else rollout[:, 0, 1:]
    return {"rollout": rollout, "cls_map": cls_map}


def make_attention_rollout(seed, hidden):
    configs = [(3, 2, 3, 10), (2, 1, 4, 5)] if hidden else [(3, 2, 2, 9), (4, 2, 3, 17)]
    cases, mistakes = [], []
    for i, (L, B, H, T) in enumerate(configs):
        gen = _gen(seed + i)
        attentions = (_randn(gen, L, B, H, T, T, scale=2.0)).softmax(-1)  # (L, B, H, T, T)
        target = runners.run_attention_rollout(tu, {"attentions": attentions})
        wrong = {
            "the identity (residual connection) is not added to each layer's attention": _rollout_variant(
                attentions, "no_identity"
            ),
            "rows are not renormalised after adding the identity": _rollout_variant(
                attentions, "no_renorm"
            ),
            "layers multiplied in the wrong order: R = A_L @ ... @ A_1 (later layers on the left)": _rollout_variant(
                attentions, "wrong_order"
            ),
            "heads combined with max: average the heads": _rollout_variant(attentions, "max_heads"),
            "the CLS map is read from the CLS column: use the CLS row rollout[:, 0, 1:]": _rollout_variant(
                attentions, "column"
            ),
        }
        cases.append({"input": {"attentions": attentions}, "target": target})
        mistakes.append(wrong)
    return cases, mistakes


# ---------------------------------------------------------------------------
# 1.11 VisionTransformer
# ---------------------------------------------------------------------------


def _vit_variant(vit, x, kind):
    tokens = vit.patch_embed(x)
    if vit.pos_embed is not None and kind != "no_pos":
        tokens = vit.pos_embed(tokens)
    cls = vit.cls_token.expand(tokens.shape[0], -1, -1)
    tokens = torch.cat([tokens, cls], 1) if kind == "cls_last" else torch.cat([cls, tokens], 1)
    attentions = []
    for block in vit.blocks:
        tokens, attn = block(tokens, return_attention=True)
        attentions.append(attn)
    if kind != "no_norm":
        tokens = vit.norm(tokens)
    right = tokens[:, 1:].mean(1) if vit.pool == "mean" else tokens[:, 0]
    feature = {
        "cls_last": tokens[:, -1],
        "mean_pool": tokens.mean(1),  # every token, the CLS too
        "cls_pool": tokens[:, 0],
    }.get(kind, right)
    return {"logits": vit.head(feature), "attention": torch.stack(attentions)}


def make_vision_transformer(seed, hidden):
    kinds = (
        ["learned2d", "sinusoidal", "none"]
        if hidden
        else ["learned1d", "learned2d", "sinusoidal", "none"]
    )
    cases, mistakes = [], []
    # The last case pools the patch tokens (pool="mean", XCS231N's ViT) instead of the CLS.
    for i, (pos, pool) in enumerate([(k, "cls") for k in kinds] + [("learned1d", "mean")]):
        config = {
            "img_size": 32,
            "patch_size": 8,
            "in_channels": 3,
            "num_classes": 5 if hidden else 10,
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "dropout": 0.0,
            "pos_embedding": pos,
        }
        if pool != "cls":
            config["pool"] = pool
        gen = _gen(seed + i)
        torch.manual_seed(seed + i)
        vit = tu.VisionTransformer(**config).eval()
        state = _random_state(vit, gen, scale=1.5)
        x = _randn(gen, 2, 3, 32, 32)
        with torch.no_grad():
            logits, attentions = vit(x, return_attention=True)
            n = vit.patch_embed.num_patches
            pos_table = (
                vit.pos_embed(torch.zeros(1, n, 16))[0] if vit.pos_embed is not None else None
            )
            wrong = {"the final LayerNorm self.norm is skipped": _vit_variant(vit, x, "no_norm")}
            if pool == "cls":
                wrong["the CLS token is appended at the end: prepend it (token 0)"] = _vit_variant(
                    vit, x, "cls_last"
                )
                wrong[
                    "the head reads the mean of all tokens: classify from the CLS token (token 0)"
                ] = _vit_variant(vit, x, "mean_pool")
            else:
                wrong[
                    "with pool='mean' the mean includes the CLS token: average the patch tokens "
                    "only (tokens 1:)"
                ] = _vit_variant(vit, x, "mean_pool")
                wrong["pool='mean' is ignored: the head reads the CLS token"] = _vit_variant(
                    vit, x, "cls_pool"
                )
            if pos != "none":
                wrong["the positional encoding self.pos_embed is not added"] = _vit_variant(
                    vit, x, "no_pos"
                )
        case_input = {"config": config, "state_dict": state, "x": x, "pos_table": pos_table}
        cases.append(
            {
                "input": case_input,
                "target": {"logits": logits, "attention": torch.stack(attentions)},
            }
        )
        mistakes.append(wrong)
    return cases, mistakes
