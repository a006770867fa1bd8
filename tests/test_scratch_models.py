"""Question 4's models: shapes, trainable-parameter counts, Diff-ViT's lambda_init per layer,
the contract's attention/position accessors, and CustomConv2d training like nn.Conv2d."""

import math

import pytest
import torch
import torch.nn.functional as F
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)
from torch import nn

import transformer_utils as tu
from kit.scratch.models import ScratchCNN, ScratchViT
from kit.scratch.recipe import ScratchConfig, build_model


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def vit_count(C, p, E, L, K, grid, mlp=2.0, pos="learned1d", diff_heads=None):
    """Parameters of ScratchViT, counted by hand from the layer definitions."""
    hidden = int(E * mlp)
    if diff_heads is None:
        attn = 4 * (E * E + E)  # q, k, v, out projections with bias
    else:
        D = E // diff_heads // 2
        attn = 4 * E * E + 4 * D + 2 * D  # no biases; 4 lambda vectors; RMSNorm weight (2D)
    block = 2 * 2 * E + attn + (E * hidden + hidden) + (hidden * E + E)  # 2 LayerNorms, MLP
    pos_params = {"learned1d": grid * grid * E, "learned2d": 2 * grid * E}.get(pos, 0)
    return (C * p * p * E + E) + E + pos_params + L * block + 2 * E + (E * K + K)


@pytest.mark.parametrize("pos", tu.POS_EMBEDDINGS)
def test_vit_shapes_counts_and_contract_accessors(pos):
    model = ScratchViT(
        28, 1, 10, patch_size=7, embed_dim=32, depth=3, num_heads=4, pos_embedding=pos
    )
    assert trainable(model) == vit_count(1, 7, 32, 3, 10, grid=4, pos=pos)
    x = torch.rand(5, 1, 28, 28)
    logits, attentions = model(x, return_attention=True)
    assert logits.shape == (5, 10) and model(x).shape == (5, 10)
    assert model.patch_grid == 4
    assert len(attentions) == 3 and all(a.shape == (5, 4, 17, 17) for a in attentions)
    assert torch.allclose(attentions[0].sum(-1), torch.ones(5, 4, 17), atol=1e-5)
    learned = model.learned_position_embeddings()
    if pos in ("learned1d", "learned2d"):
        assert learned.shape == (4, 4, 32)
    else:
        assert learned is None


def test_vit_normalises_inside_with_the_dataset_statistics():
    model = ScratchViT(32, 3, 10, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                       mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    expected = model.vit((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_diff_vit_counts_and_lambda_init_by_depth():
    model = ScratchViT(
        32, 3, 10, patch_size=4, embed_dim=32, depth=4, num_heads=2, differential=True
    )
    assert trainable(model) == vit_count(3, 4, 32, 4, 10, grid=8, diff_heads=2)
    layers = [block.attn for block in model.vit.blocks]
    assert all(isinstance(a, tu.DifferentialAttention) for a in layers)
    expected = [0.8 - 0.6 * math.exp(-0.3 * i) for i in range(4)]  # layer_idx 1..4
    assert [a.lambda_init for a in layers] == pytest.approx(expected)
    logits, attentions = model(torch.rand(3, 3, 32, 32), return_attention=True)
    assert logits.shape == (3, 10) and [a.shape for a in attentions] == [(3, 2, 65, 65)] * 4


def test_cnn_shapes_and_counts():
    model = ScratchCNN(28, 1, 10, channels=(8, 16), convs_per_stage=2, hidden=32)
    convs = 1 * 8 * 9 + 8 * 8 * 9 + 8 * 16 * 9 + 16 * 16 * 9  # no conv bias (BatchNorm follows)
    norms = 2 * (8 + 8 + 16 + 16)
    head = (16 * 7 * 7 * 32 + 32) + (32 * 10 + 10)
    assert trainable(model) == convs + norms + head
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert sum(isinstance(m, tu.CustomConv2d) for m in model.modules()) == 4


def test_build_model_from_config_and_one_line_errors():
    cfg = ScratchConfig(dataset="cifar10", model="diff_vit", patch_size=8, embed_dim=32,
                        depth=2, num_heads=2)  # fmt: skip
    assert build_model(cfg, 3, 32, 10)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    from kit.errors import UserError

    with pytest.raises(UserError, match="does not divide"):
        build_model(ScratchConfig(dataset="fashion_mnist", patch_size=8), 1, 28, 10)
    with pytest.raises(UserError, match="divisible"):
        build_model(ScratchConfig(model="diff_vit", embed_dim=36, num_heads=4), 3, 32, 10)


def test_custom_conv_cnn_trains_to_the_same_loss_as_nn_conv2d():
    torch.manual_seed(0)
    custom = ScratchCNN(16, 3, 5, channels=(6, 8), convs_per_stage=1, hidden=16, custom_conv=True)
    reference = ScratchCNN(16, 3, 5, channels=(6, 8), convs_per_stage=1, hidden=16,
                           custom_conv=False)  # fmt: skip
    assert any(isinstance(m, nn.Conv2d) for m in reference.modules())
    reference.load_state_dict(custom.state_dict())  # same names, same shapes
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(32, 3, 16, 16, generator=g), torch.randint(0, 5, (32,), generator=g)
    losses = {}
    for name, model in (("custom", custom), ("reference", reference)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses[name] = []
        for _ in range(8):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["custom"][-1] < losses["custom"][0] - 0.1, "the CNN should fit this batch"
    assert losses["custom"] == pytest.approx(losses["reference"], abs=1e-4)


def test_bench_scratch_runs_both_sides_in_tiny_mode(capsys):

    from benchmarks import bench_scratch

    result = bench_scratch.main(["--tiny", "--batch", "4", "--steps", "1", "--warmup", "1"])
    assert set(result["rates"]) == {"ours", "torch"} and result["ratio"] > 0
    assert "ratio ours/torch" in capsys.readouterr().out
    ours = bench_scratch.ScratchViT(28, 1, 10, patch_size=7, embed_dim=32, depth=2, num_heads=4)
    theirs = bench_scratch.TorchViT(28, 1, 10, patch_size=7, embed_dim=32, depth=2, num_heads=4,
                                    mlp_ratio=2.0, dropout=0.0)  # fmt: skip
    assert trainable(ours) == trainable(theirs)  # the same architecture on both sides


def scratch_presets():
    import yaml

    from kit.config import DEFAULT_CONFIG_PATH

    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())["scratch"]


def check_preset_builds_its_model(name):
    from kit.config import load_preset
    from kit.scratch.datasets import CLASS_NAMES, IMAGE_SHAPE

    cfg = load_preset("scratch", name, ScratchConfig)
    channels, side = IMAGE_SHAPE[cfg.dataset]
    model = build_model(cfg, channels, side, len(CLASS_NAMES[cfg.dataset]))
    if cfg.model == "diff_vit":
        assert isinstance(model.vit.blocks[0].attn, tu.DifferentialAttention), name
    if cfg.model == "simple_vit":  # some blocks attend inside windows, some globally
        kinds = {type(b.attn) for b in model.vit.blocks}
        assert kinds == {tu.WindowSelfAttention, tu.MultiHeadAttention}, name
    return cfg


def test_one_scratch_preset_of_each_model_family_loads_and_builds_its_model():
    """The first preset of each model (vit, diff_vit, simple_vit, cnn); the slow tier builds
    every one."""
    names = scratch_presets()
    assert {"vit_fmnist_cpu", "diffvit_fmnist_cpu", "cnn_fmnist_cpu", "scratch_smoke"} <= set(names)
    first = {}
    for name, overrides in names.items():
        first.setdefault((overrides or {}).get("model", ScratchConfig().model), name)
    assert set(first) == {"vit", "diff_vit", "simple_vit", "cnn"}
    for model, name in first.items():
        assert check_preset_builds_its_model(name).model == model


@pytest.mark.slow
def test_every_scratch_preset_loads_and_builds_its_model():
    names = scratch_presets()
    assert {"vit_fmnist_cpu", "diffvit_fmnist_cpu", "cnn_fmnist_cpu", "scratch_smoke"} <= set(names)
    for name in names:
        check_preset_builds_its_model(name)
