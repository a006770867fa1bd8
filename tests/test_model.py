"""PixMo models: the baseline really applies its encoder; the point model really uses the point."""

import pytest
import torch
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)

import model as pixmo_model
from model import (
    PixMoModel,
    PointPixMoModel,
    ResNet34Trunk,
    WeightsError,
    build_pixmo_model,
    load_resnet34_weights,
)

SIZE = 64  # small images keep the CPU tests fast; the models accept any multiple of 32


def batch(seed=0, count=3, size=SIZE):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator)
    points = torch.rand(count, 2, generator=generator) * size
    return images, points


def test_baseline_applies_its_encoder_and_trains_only_layer4():
    torch.manual_seed(0)
    net = PixMoModel(num_classes=20)
    images, points = batch()
    logits = net(images, points)
    assert logits.shape == (3, 20)
    logits.logsumexp(dim=1).sum().backward()
    for name, param in net.encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"encoder {name} unused"
    trainable = {
        n.split(".")[1] for n, p in net.backbone.named_parameters(prefix="b") if p.requires_grad
    }
    assert trainable == {"layer4"}
    # The backbone is a registered submodule: in the state dict, moved by .to(), no override.
    assert any(k.startswith("backbone.layer4.") for k in net.state_dict())
    assert net.to(torch.float64) is net and net.backbone.conv1.weight.dtype == torch.float64


def test_baseline_encoder_changes_the_output():
    """Zeroing the encoder's output projections changes the logits: the encoder is in the path."""
    torch.manual_seed(0)
    net = PixMoModel(num_classes=20).eval()
    images, points = batch()
    with torch.no_grad():
        before = net(images, points)
        for layer in net.encoder.layers:
            layer.linear2.weight.mul_(3.0)
        after = net(images, points)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("local_size", [0, 32])
def test_point_model_prediction_depends_on_the_point(local_size):
    torch.manual_seed(0)
    net = PointPixMoModel(num_classes=20, crop_size=32, local_size=local_size).eval()
    images, points = batch(count=4)
    with torch.no_grad():
        here = net(images, points)
        there = net(images, (points + torch.tensor([20.0, -15.0])).clamp(0, SIZE))
        again = net(images, points)
    assert torch.equal(here, again)  # deterministic in eval mode
    assert (here - there).abs().max() > 1e-3  # another point, another prediction


@pytest.mark.parametrize("crop_stream,local_size", [(True, 32), (False, 0)])
def test_point_model_trains_its_point_parts(crop_stream, local_size):
    torch.manual_seed(0)
    net = PointPixMoModel(
        num_classes=20, crop_stream=crop_stream, crop_size=32, local_size=local_size
    )
    images, points = batch()
    net(images, points).logsumexp(dim=1).sum().backward()
    parts = [net.point_embed, net.offset_embed, net.mid_proj, net.encoder]
    if local_size:
        parts.append(net.local_cnn)
    for part in parts:
        for name, param in part.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert net.backbone.layer4[0].conv1.weight.grad is not None
    assert net.backbone.layer3[0].conv1.weight.grad is None  # frozen, as in the assignment


@pytest.mark.parametrize("side", [16, 32, 64])
def test_local_cnn_maps_a_crop_to_one_token(side):
    torch.manual_seed(0)
    cnn = pixmo_model.LocalCNN(dim=8).eval()
    crops = torch.randn(2, 3, side, side)
    with torch.no_grad():
        out = cnn(crops)
        assert out.shape == (2, 8), f"expected (2, 8), got {tuple(out.shape)}"
        centre = crops.clone()
        centre[:, :, side // 2 - 2 : side // 2 + 2, side // 2 - 2 : side // 2 + 2] += 5.0
        assert (cnn(centre) - out).abs().max() > 0  # it sees what lies under the point


def test_checkpoint_state_keeps_trainable_batch_norm_statistics():
    """The LocalCNN's BatchNorms train, so their running statistics must be saved with the
    trainable parameters (else best.pt and --resume would use other statistics)."""
    from kit.trainer import load_trainable_state, trainable_state_dict

    torch.manual_seed(0)
    net = PointPixMoModel(num_classes=20, crop_size=32, local_size=32)
    net.train()(*batch(count=4))  # updates the LocalCNN's running statistics
    state = trainable_state_dict(net)
    key = "local_cnn.features.1.running_mean"
    assert key in state and state[key].abs().sum() > 0
    assert not any(k.startswith("backbone.layer1.") for k in state)  # frozen stage: not saved
    torch.manual_seed(1)
    other = PointPixMoModel(num_classes=20, crop_size=32, local_size=32)
    load_trainable_state(other, state)
    torch.testing.assert_close(other.state_dict()[key], state[key], rtol=0, atol=0)


def test_gpu_settings_run_on_cpu():
    """The CUDA path (channels_last + bf16 autocast) in a tiny CPU run: it executes."""
    torch.manual_seed(0)
    for kind in ("baseline", "point"):
        if kind == "point":
            net = build_pixmo_model(kind, crop_size=16, local_size=16)
        else:
            net = build_pixmo_model(kind)
        net = net.to(memory_format=torch.channels_last)
        images, points = batch(count=2, size=32)  # bf16 convolutions are slow on a CPU
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(images, points)
        assert logits.shape == (2, 20) and torch.isfinite(logits.float()).all()
        logits.float().sum().backward()
    with pytest.raises(ValueError, match="unknown model"):
        build_pixmo_model("nope")


def test_weights_from_a_local_file(tmp_path):
    reference = ResNet34Trunk()
    state = {
        **reference.state_dict(),
        "fc.weight": torch.zeros(1000, 512),
        "fc.bias": torch.zeros(1000),
    }
    torch.save(state, tmp_path / "r34.pth")
    trunk = ResNet34Trunk()
    lines = []
    assert load_resnet34_weights(trunk, tmp_path / "r34.pth", log=lines.append)
    assert torch.equal(trunk.conv1.weight, reference.conv1.weight) and len(lines) == 1
    assert trunk.pretrained

    spare = ResNet34Trunk()  # one for the three refusals (each ResNet-34 costs ~0.3 s)
    with pytest.raises(WeightsError, match="not found"):
        load_resnet34_weights(spare, tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable"):
        load_resnet34_weights(spare, tmp_path / "bad.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="not a ResNet-34"):
        load_resnet34_weights(spare, tmp_path / "wrong.pth")


def test_offline_without_weights_warns_once(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache
    lines = []
    trunk = ResNet34Trunk()
    assert not load_resnet34_weights(trunk, None, download=False, log=lines.append)
    assert len(lines) == 1 and "RANDOMLY initialised" in lines[0]
    assert not trunk.pretrained
    assert pixmo_model.resnet34_cache_path() == tmp_path / "checkpoints" / "resnet34-b627a593.pth"


def test_batch_norm_statistics_stay_frozen_and_calibrate():
    torch.manual_seed(0)
    trunk = ResNet34Trunk().train()
    assert trunk.layer4.training and not trunk.layer4[0].bn1.training
    images = torch.randn(4, 3, SIZE, SIZE) * 3 + 1
    before = trunk.layer1[0].bn1.running_mean.clone()
    trunk(images)
    assert torch.equal(before, trunk.layer1[0].bn1.running_mean)  # training does not move them
    trunk.calibrate_batch_norm([images[:2], images[2:]])
    assert not torch.equal(before, trunk.layer1[0].bn1.running_mean)
    assert torch.isfinite(trunk.layer4[2].bn2.running_var).all()
    assert not trunk.bn1.training and trunk.bn1.momentum == 0.1
    mid, features = trunk.eval()(images)
    assert mid.shape == (4, 256, SIZE // 16, SIZE // 16) and features.shape == (4, 512, 2, 2)
    assert 0.05 < features.std() < 20  # calibrated: activations neither vanish nor explode


@pytest.mark.parametrize("trainable_from", ["layer4", "none"])
def test_fusing_frozen_batch_norm_keeps_outputs_and_trainable_parameters(trainable_from):
    torch.manual_seed(0)
    net = PointPixMoModel(num_classes=20, crop_size=32, trainable_from=trainable_from)
    images, points = batch()
    net.backbone.calibrate_batch_norm([images])
    net.eval()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    with torch.no_grad():
        before = net(images, points)
    count = net.backbone.fuse_frozen_batch_norm()
    assert count == (36 if trainable_from == "none" else 29)  # BN layers folded
    with torch.no_grad():
        after = net(images, points)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == trainable
    remaining = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(remaining) == (0 if trainable_from == "none" else 7)  # layer4: 3 blocks + down
