"""Our ViT against torchvision's, and the prompt (VPT) mechanics.

The ViT-B/32 tests run twice: in the fast tier on a ViT-B/32 made small (the same 224 px
images and 32 px patches; 2 layers, 2 heads, width 16), put in the place of ViT-B/32's
hyper-parameters in ``ENCODER_SPECS``, so that ``vit_b_32``, ``build_vit("vit_b_32")`` and
``ViTPrompt(..., "vit_b_32")`` build it; in the slow tier (``-m slow``) on the real ViT-B/32
(88 M parameters: about a second to initialise each).
"""

import pytest
import torch
import torchvision
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)

import vision_transformer as vt
from fine_tune import ViTLinear, ViTPrompt

SMALL_B_32 = dict(
    image_size=224, patch_size=32, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
)


@pytest.fixture(scope="module", params=["small", pytest.param("vit_b_32", marks=pytest.mark.slow)])
def spec(request):
    """ViT-B/32's hyper-parameters as the kit builds it in this test: the real ones (slow
    tier) or ``SMALL_B_32`` in their place."""
    if request.param == "vit_b_32":
        yield dict(vt.ENCODER_SPECS["vit_b_32"], name="vit_b_32")
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(vt.ENCODER_SPECS, "vit_b_32", SMALL_B_32)
        yield dict(SMALL_B_32, name="small")


def torchvision_vit(spec):
    """torchvision's model of the same architecture (for ViT-B/32 its own vit_b_32)."""
    if spec["name"] == "vit_b_32":
        return torchvision.models.vit_b_32()
    return torchvision.models.VisionTransformer(**{k: v for k, v in spec.items() if k != "name"})


@pytest.fixture(scope="module")
def tv_vit_b_32(spec):
    torch.manual_seed(0)
    model = torchvision_vit(spec).eval()
    with torch.no_grad():  # torchvision zero-inits the head: make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_torchvision_state_dict_loads_strictly_and_outputs_match(spec, tv_vit_b_32):
    ours = vt.build_vit("vit_b_32").eval()
    ours.load_state_dict(tv_vit_b_32.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(tv_vit_b_32.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = tv_vit_b_32(x)
        fast = ours(x)
        explicit, maps = ours(x, return_attention=True)
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(explicit, expected, rtol=1e-4, atol=1e-5)
    layers, heads = spec["num_layers"], spec["num_heads"]
    assert len(maps) == layers and maps[0].shape == (2, heads, 50, 50)
    torch.testing.assert_close(maps[min(3, layers - 1)].sum(-1), torch.ones(2, heads, 50))


def test_our_state_dict_loads_into_torchvision(spec, tv_vit_b_32):
    ours = vt.build_vit("vit_b_32")
    torchvision_vit(spec).load_state_dict(ours.state_dict(), strict=True)


def test_weights_from_path_and_from_torchvision_cache(tmp_path, monkeypatch, tv_vit_b_32):
    path = tmp_path / "w.pth"
    torch.save(tv_vit_b_32.state_dict(), path)
    model = vt.vit_b_32(weights=str(path))
    assert model.weights_source.kind == "path"
    torch.testing.assert_close(model.class_token, tv_vit_b_32.class_token)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path.rename(tmp_path / "hub" / "checkpoints" / vt.VIT_B_32_FILE)
    model = vt.vit_b_32(weights="IMAGENET1K_V1")
    assert model.weights_source.kind == "cache"


def test_no_weights_offline_warns_once_and_carries_on(tmp_path, monkeypatch, spec):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    lines = []
    model = vt.vit_b_32(weights="IMAGENET1K_V1", allow_download=False, log=lines.append)
    assert model.weights_source.kind == "random"
    assert len(lines) == 1 and "RANDOMLY initialised" in lines[0]
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_other_image_size_interpolates_positions(spec):
    model = vt.vit_b_32(weights=None, image_size=64)
    assert model.encoder.pos_embedding.shape == (1, 5, spec["hidden_dim"])
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_vpt_deep_trainable_count_and_no_backbone_gradient(spec):
    model = ViTPrompt(102, "vit_b_32", num_prompts=10, deep=True, weights=None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers, d = spec["num_layers"], spec["hidden_dim"]  # ViT-B/32: 12 and 768
    assert trainable == layers * 10 * d + d * 102 + 102
    v = (6 / (d + d)) ** 0.5
    assert model.prompts.abs().max() <= v and model.prompts.abs().max() > 0.9 * v
    model.train()
    assert not model.backbone.training  # frozen backbone stays in eval mode
    model(torch.randn(2, 3, 224, 224)).sum().backward()
    assert model.prompts.grad is not None and model.prompts.grad.abs().sum() > 0
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
    assert "backbone.conv_proj.weight" in model.state_dict()  # registered, moves with .to()


def reference_vpt(vit, images, prompts, deep):
    """Straightforward VPT: [CLS, prompts, patches]; deep replaces prompt slots per layer."""
    x = vit.tokens(images) + vit.encoder.pos_embedding
    b, p = x.shape[0], prompts.shape[1]
    x = torch.cat([x[:, :1], prompts[0].expand(b, -1, -1), x[:, 1:]], dim=1)
    for i, layer in enumerate(vit.encoder.layers):
        if deep and i > 0:
            x = x.clone()
            x[:, 1 : 1 + p] = prompts[i]
        x, _ = layer(x)
    return vit.encoder.ln(x)[:, 0]


@pytest.mark.parametrize("deep", [True, False])
def test_prompts_match_reference_and_zero_prompts_is_plain_model(deep):
    torch.manual_seed(0)
    model = ViTPrompt(5, "vit_tiny_test", num_prompts=3, deep=deep, weights=None).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model.head(reference_vpt(model.backbone, x, model.prompts, deep))
        torch.testing.assert_close(model(x), ref)
        logits, maps = model(x, return_attention=True)
        torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-6)
        assert maps[0].shape == (4, 2, 1 + 3 + 16, 1 + 3 + 16)

    # No prompts at all: exactly the plain backbone + head.
    torch.manual_seed(0)
    plain = ViTPrompt(5, "vit_tiny_test", num_prompts=0, deep=deep, weights=None).eval()
    linear = ViTLinear(5, "vit_tiny_test", weights=None).eval()
    linear.load_state_dict({k: v for k, v in plain.state_dict().items() if k != "prompts"})
    with torch.no_grad():
        torch.testing.assert_close(plain(x), linear(x), rtol=0, atol=0)


def test_deep_prompts_replace_previous_prompt_outputs():
    """Changing layer i's prompts changes the output; the shallow model has only one set."""
    torch.manual_seed(0)
    deep = ViTPrompt(5, "vit_tiny_test", num_prompts=2, deep=True, weights=None).eval()
    shallow = ViTPrompt(5, "vit_tiny_test", num_prompts=2, deep=False, weights=None).eval()
    assert deep.prompts.shape == (2, 2, 32) and shallow.prompts.shape == (1, 2, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = deep(x)
        deep.prompts[1].add_(torch.randn_like(deep.prompts[1]))  # (a constant would vanish in LN)
        assert not torch.allclose(before, deep(x))


def test_prompt_dropout_only_in_training():
    torch.manual_seed(0)
    model = ViTPrompt(5, "vit_tiny_test", num_prompts=3, prompt_dropout=0.5, weights=None)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_full_finetune_trains_everything():
    model = ViTLinear(5, "vit_tiny_test", weights=None, train_backbone=True)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert model.backbone.training
