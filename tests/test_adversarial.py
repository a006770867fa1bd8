"""adversarial.py: the PGD attack, adversarial training batches and the command line.

The attack is checked against properties (eps-ball, [0, 1], FGSM by hand, targeted mode)
and against torchattacks' independent PGD on a tiny model; robust accuracy, adversarial
training batches and the command line run on tiny cases. The slow tier (``-m slow``) adds the
learning claims on a small CNN trained here on real Fashion-MNIST (skipped, with the reason,
when the dataset is not installed) and the command line in a real process. ``diagnose``
names the typical mistakes of a PGD implementation; the mistake tests prove that it can
tell each of them from the correct attack.
"""

import functools
import gzip
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)
from torch import nn

import adversarial
from adversarial import pgd_attack
from kit import attack
from kit.device_batches import TensorBatches
from kit.errors import UserError
from kit.finished_runs import TestImages, TrainedModel

ROOT = Path(__file__).resolve().parents[1]


def AdversarialBatches(source, model, *args, **kwargs):
    """kit.attack.AdversarialBatches with the student's attack, adversarial.pgd_attack."""
    return attack.AdversarialBatches(source, model, pgd_attack, *args, **kwargs)


def robust_accuracy(model, source, *args, **kwargs):
    return attack.robust_accuracy(model, source, pgd_attack, *args, **kwargs)


FMNIST = Path("/usr/share/datasets/fashion-mnist")


class TinyCNN(nn.Module):
    """A small Fashion-MNIST-sized CNN that, like Question 4's models, takes [0, 1] images
    and normalises them itself."""

    def __init__(self, channels=1, classes=10, width=16):
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.286))
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.353))
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.LazyLinear(classes),
        )

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


def small_model(seed=0, size=12):
    torch.manual_seed(seed)
    model = TinyCNN(width=8)
    model(torch.rand(2, 1, size, size))  # materialise the lazy layer
    return model.eval()


def random_batch(seed=1, n=16, size=12, classes=10):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    images[:, :, :2] = 0.0  # pixels on both borders of [0, 1]: the clamp matters there
    images[:, :, -2:] = 1.0
    labels = torch.randint(0, classes, (n,), generator=g)
    return images, labels


def linf(a, b):
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------- properties of the attack


@pytest.mark.parametrize("kind", ["float32", "bf16_autocast", "bf16_model"])
@pytest.mark.parametrize("random_start", [True, False])
def test_stays_in_eps_ball_and_pixel_range(kind, random_start):
    model = small_model()
    images, labels = random_batch()
    if kind == "bf16_model":
        model = model.to(torch.bfloat16)
        images = images.to(torch.bfloat16)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    eps = 0.1
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16_autocast")
    with autocast:
        # alpha large enough that every pixel runs into the ball's wall
        adv = pgd_attack(model, images, labels, eps, 0.04, 6, random_start=random_start)
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert not adv.requires_grad
    assert linf(adv, images) <= eps, "left the eps-ball"
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0, "left [0, 1]"
    assert linf(adv, images) > 0.9 * eps, "the attack should reach the ball's wall"
    assert not model.training, "the model's mode must not change"
    assert all(p.grad is None for p in model.parameters()), "gradients leaked into the model"
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}


def test_works_under_no_grad_and_keeps_train_mode():
    model = small_model().train()
    images, labels = random_batch()
    with torch.no_grad():
        adv = pgd_attack(model, images, labels, 0.05, 0.01, 2)
    assert model.training
    assert linf(adv, images) > 0


def test_fgsm_is_one_signed_gradient_step():
    model = small_model()
    images, labels = random_batch()
    eps = 0.07
    x = images.clone().requires_grad_(True)
    F.cross_entropy(model(x), labels).backward()
    expected = (images + eps * x.grad.sign()).clamp(0, 1)
    adv = pgd_attack(model, images, labels, eps, eps, 1, random_start=False)
    assert linf(adv, expected) < 1e-6


def test_targeted_pgd_raises_the_target_probability():
    model = small_model()
    images, labels = random_batch()
    targets = (labels + 3) % 10
    adv = pgd_attack(model, images, targets, 0.1, 0.01, 10, targeted=True)
    with torch.no_grad():
        p_before = model(images).softmax(1).gather(1, targets[:, None])
        p_after = model(adv).softmax(1).gather(1, targets[:, None])
    assert (p_after > p_before).all(), "every image should move towards its target"
    assert p_after.mean() > 1.1 * p_before.mean()
    away = pgd_attack(model, images, targets, 0.1, 0.01, 10, targeted=False)
    with torch.no_grad():
        p_away = model(away).softmax(1).gather(1, targets[:, None])
    assert (p_away < p_before).all(), "untargeted on the same labels must lower it"


def test_unknown_labels_are_not_attacked():
    model = small_model()
    images, labels = random_batch()
    labels[:4] = -1
    adv = pgd_attack(model, images, labels, 0.1, 0.02, 3, random_start=False)
    assert linf(adv[:4], images[:4]) == 0
    assert linf(adv[4:], images[4:]) > 0


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(eps=1.5), "eps must be a number in [0, 1]"),
        (dict(eps=-0.1), "eps must be a number in [0, 1]"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(alpha=-1.0), "alpha must be a number >= 0"),
        (dict(images=torch.rand(4, 1, 12, 12) * 255), "images must be in [0, 1]"),
        (dict(images=torch.zeros(4, 12, 12)), "images must be a float tensor (B, C, H, W)"),
        (dict(labels=torch.zeros(3, dtype=torch.long)), "labels must be a tensor of shape (4,)"),
    ],
)
def test_bad_arguments_say_what_to_pass(change, message):
    args = dict(
        model=small_model(),
        images=torch.rand(4, 1, 12, 12),
        labels=torch.zeros(4, dtype=torch.long),
        eps=0.1,
        alpha=0.01,
        steps=2,
    )
    args.update(change)
    with pytest.raises(ValueError) as err:
        pgd_attack(**args)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- named mistakes

MISTAKES = {
    "no_projection": "the steps are never projected back into the eps-ball",
    "wrong_sign": "the step goes down the loss (gradient descent instead of ascent)",
    "no_pixel_clamp": "the adversarial image is not clipped to [0, 1]",
    "raw_gradient": "the step uses the raw gradient instead of its sign",
    "no_random_start": "random_start=True does not start at a random point of the ball",
}


def pgd_variant(model, images, labels, eps, alpha, steps, random_start=True, mistake=None):
    """A PGD written independently of adversarial.py, with one typical mistake switched on."""
    x0 = images.detach().float()
    adv = x0.clone()
    if random_start and mistake != "no_random_start":
        adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(adv), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        step = grad if mistake == "raw_gradient" else grad.sign()
        sign = -1.0 if mistake == "wrong_sign" else 1.0
        adv = adv.detach() + sign * alpha * step
        if mistake != "no_projection":
            adv = x0 + (adv - x0).clamp(-eps, eps)
        if mistake != "no_pixel_clamp":
            adv = adv.clamp(0, 1)
    return adv.detach()


DIAGNOSIS_SETTINGS = (0.05, 0.02, 6)  # eps, alpha, steps: alpha < eps, 6 steps reach the wall


@functools.lru_cache(maxsize=1)
def diagnosis_case():
    """A fixed model and batch, and torchattacks' PGD (no random start) on them."""
    torchattacks = pytest.importorskip("torchattacks")
    model = small_model(seed=3)
    images, labels = random_batch(seed=4)
    eps, alpha, steps = DIAGNOSIS_SETTINGS
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    return model, images, labels, attack(images, labels)


def diagnose(attack):
    """None when ``attack`` behaves like PGD, else the name of the probable mistake (or a
    description of the difference). The reference is torchattacks' PGD."""
    model, images, labels, expected = diagnosis_case()
    eps, alpha, steps = DIAGNOSIS_SETTINGS
    got = attack(model, images, labels, eps, alpha, steps, random_start=False)
    if linf(got, expected) > 1e-5:
        for mistake in MISTAKES:
            if mistake == "no_random_start":
                continue
            wrong = pgd_variant(model, images, labels, eps, alpha, steps, False, mistake)
            if linf(got, wrong) <= 1e-5:
                return mistake
        return f"differs from torchattacks' PGD by up to {linf(got, expected):.3g}"
    torch.manual_seed(0)
    start = attack(model, images, labels, eps, alpha, 0, random_start=True)
    if linf(start, images) == 0:
        return "no_random_start"
    return None


def test_pgd_attack_matches_torchattacks_exactly():
    assert diagnose(pgd_attack) is None


def test_the_independent_variant_is_correct_without_a_mistake():
    assert diagnose(pgd_variant) is None


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_named_mistake_is_recognised(mistake):
    assert diagnose(functools.partial(pgd_variant, mistake=mistake)) == mistake


# ---------------------------------------------------------------- adversarial training source


class ListSource:
    def __init__(self, batches):
        self.list, self.seed = batches, 7

    def __len__(self):
        return len(self.list)

    def batches(self, epoch=0, start=0):
        yield from self.list[start:]

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = state["seed"]


def test_adversarial_batches_attack_every_batch_and_restore_train_mode():
    model = small_model().train()
    batches = [random_batch(seed=s, n=8) for s in range(3)]
    src = AdversarialBatches(ListSource(batches), model, eps=0.1, alpha=0.03, steps=3)
    assert len(src) == 3 and src.state_dict() == {"seed": 7}
    src.load_state_dict({"seed": 9})
    assert src.source.seed == 9
    seen_modes = []
    hook = model.register_forward_pre_hook(lambda m, _: seen_modes.append(m.training))
    out = list(src.batches(0, start=1))
    hook.remove()
    assert len(out) == 2
    for (adv, y), (x, y0) in zip(out, batches[1:]):
        assert torch.equal(y, y0)
        assert 0 < linf(adv, x) <= 0.1
    assert seen_modes and not any(seen_modes), "the attack must run the model in eval mode"
    assert model.training, "the model must be back in train mode"
    assert all(p.grad is None for p in model.parameters())


def test_adversarial_batches_reject_bad_settings():
    with pytest.raises(ValueError, match="eps must be"):
        AdversarialBatches(ListSource([]), small_model(), eps=2.0, alpha=0.01, steps=3)
    with pytest.raises(ValueError, match="precision"):
        AdversarialBatches(ListSource([]), small_model(), 0.1, 0.01, 3, precision="fp16")


def test_adversarial_config_is_typed_and_checked():
    assert attack.adversarial_config(None) is None
    adv = attack.adversarial_config({"eps": 0.1, "alpha": 0.02, "steps": 5})
    assert (adv.eps, adv.alpha, adv.steps, adv.eval_steps) == (0.1, 0.02, 5, 20)
    for bad, message in [
        ({"epsilon": 0.1}, "unknown key 'epsilon'"),
        ({"eps": 2}, "must be in (0, 1]"),
        ({"steps": 0}, "steps 0"),
        ({"steps": 1.5}, "'steps'"),
        ([0.1], "must be a mapping"),
    ]:
        with pytest.raises(UserError) as err:
            attack.adversarial_config(bad)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_robust_validation_logs_the_last_step_of_each_epoch(tmp_path):
    import logging

    model = small_model().train()
    val = ListSource([random_batch(seed=s, n=8) for s in range(4)])
    settings = attack.AdversarialConfig(eps=0.1, eval_alpha=0.05, eval_steps=2, eval_images=10)
    hook = attack.RobustValidation(model, val, pgd_attack, settings, precision="fp32")
    trainer = types.SimpleNamespace(
        train_source=[0] * 3,  # 3 steps per epoch
        log=logging.getLogger("test_adversarial"),
        ctx=types.SimpleNamespace(world_size=1, is_main=True),
        run_dir=tmp_path,
    )
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    for step in range(3):
        hook(trainer, 0, step)
    assert torch.equal(torch.rand(3), expected_next), "training's random stream must not move"
    hook.close()
    assert list(hook.history) == [1]
    clean, robust = hook.history[1]
    assert 0 <= robust <= 1 and 0 <= clean <= 1
    assert model.training
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # eval_images 10 of 8-image batches: two batches, 16 images
    r = attack.attack_source(model, val, pgd_attack, 0.1, 0.05, 1, limit=10)
    assert r.count == 16


def test_robust_accuracy_is_the_accuracy_on_the_attacked_images():
    """robust_accuracy (kit.attack.attack_source) over a batch source: the clean accuracy, and
    the accuracy on pgd_attack's images of each batch (no random start: reproducible)."""
    model = small_model()
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (20, 1, 12, 12), dtype=torch.uint8, generator=g)
    x = images.float() / 255
    with torch.no_grad():
        predicted = model(x).argmax(1)
    labels = torch.where(torch.arange(20) < 14, predicted, (predicted + 1) % 10)  # 14 right
    source = TensorBatches(images, labels, 8, "cpu")  # batches of 8, 8 and 4
    settings = (0.1, 0.02, 5)
    clean, robust = robust_accuracy(model, source, *settings, random_start=False)
    assert clean == 14 / 20
    adv = torch.cat(
        [pgd_attack(model, xb, yb, *settings, random_start=False) for xb, yb in source.batches()]
    )
    with torch.no_grad():
        expected = (model(adv).argmax(1) == labels).float().mean().item()
    assert robust == pytest.approx(expected) and robust < clean, (robust, clean)
    assert robust_accuracy(model, source, 0.0, 0.02, 5) == (clean, clean)  # eps 0: no attack
    model.train()
    robust_accuracy(model, source, *settings)
    assert model.training, "the model's mode must be restored"


def bar_images(n, seed, size=12):
    """An easy synthetic task for adversarial training in seconds: uint8 noise (0-109) and,
    for class k of 4, a bright quarter (+100 grey levels) in the k-th quarter of the image."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.randint(0, 110, (n, 1, size, size), dtype=torch.uint8, generator=g)
    h = size // 2
    for k in range(4):
        r, c = divmod(k, 2)
        images[labels == k, :, r * h : (r + 1) * h, c * h : (c + 1) * h] += 100
    return images, labels


def test_adversarial_training_on_a_tiny_synthetic_task_resists_the_attack():
    """Adversarial training through kit.attack.AdversarialBatches, in seconds: on the easy
    synthetic task both models are right on every clean test image, and the one trained on
    PGD-2 examples keeps more accuracy under PGD-10 (eps 0.15). Measured over seeds 0-7:
    0.12 to 0.53 more (seed 0: 0.30 vs 0.67). The slow tier makes the same claim on real
    Fashion-MNIST."""
    train, test = bar_images(512, seed=0), bar_images(128, seed=100)
    plain = train_small_cnn(*train, epochs=2)
    robust_model = train_small_cnn(*train, epochs=2, adversarial=dict(eps=0.15, alpha=0.1, steps=2))
    accuracy = {}
    for name, model in (("plain", plain), ("adversarial", robust_model)):
        torch.manual_seed(0)
        accuracy[name] = robust_accuracy(model, TensorBatches(*test, 128, "cpu"), 0.15, 0.03, 10)
    assert accuracy["plain"][0] == accuracy["adversarial"][0] == 1.0, accuracy
    assert accuracy["adversarial"][1] >= accuracy["plain"][1] + 0.15, accuracy


# ---------------------------------------------------------------- real Fashion-MNIST


def read_fmnist(split, n):
    """The first ``n`` images (N, 1, 28, 28) uint8 and labels of a Fashion-MNIST idx file."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FMNIST / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = torch.frombuffer(bytearray(f.read(16 + n * 784)[16:]), dtype=torch.uint8)
    with gzip.open(FMNIST / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = torch.frombuffer(bytearray(f.read(8 + n)[8:]), dtype=torch.uint8)
    return images.view(n, 1, 28, 28), labels.long()


def train_small_cnn(images, labels, epochs, adversarial=None, seed=0):
    """TinyCNN trained with Adam on uint8 ``images`` (N, 1, H, W), batches of 64; with
    ``adversarial`` (AdversarialBatches' settings) on PGD examples of each batch instead."""
    torch.manual_seed(seed)
    model = TinyCNN()
    model(torch.rand(2, 1, *images.shape[-2:]))  # materialise the lazy layer
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = []
    for e in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(e))
        for i in range(0, len(order) - 63, 64):
            sel = order[i : i + 64]
            batches.append((images[sel].float() / 255, labels[sel]))
    source = ListSource(batches)
    if adversarial:
        source = AdversarialBatches(source, model, **adversarial)
    model.train()
    for x, y in source.batches():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def fmnist():
    """A small CNN trained here on 4000 real Fashion-MNIST images, 200 test images, and its
    accuracy under our PGD-20 (eps 0.1, alpha 0.01), computed once for the tests below."""
    if not FMNIST.is_dir():
        pytest.skip(
            f"real Fashion-MNIST not found in {FMNIST}; as root: apt-get install -y "
            "dataset-fashion-mnist"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread costs more than it gives
    try:
        train = read_fmnist("train", 4000)
        test = read_fmnist("test", 200)
        model = train_small_cnn(*train, epochs=2)
        torch.manual_seed(0)
        clean, robust = robust_accuracy(model, TensorBatches(*test, 200, "cpu"), 0.1, 0.01, 20)
        yield dict(train=train, test=test, model=model, clean=clean, robust=robust)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_pgd_collapses_the_accuracy_of_a_trained_cnn(fmnist):
    clean, robust = fmnist["clean"], fmnist["robust"]
    assert clean >= 0.75, f"the small CNN should learn Fashion-MNIST (clean {clean:.3f})"
    assert robust <= 0.25, f"PGD-20 eps 0.1 should break it (robust {robust:.3f})"
    fgsm_clean, fgsm = robust_accuracy(
        fmnist["model"], TensorBatches(*fmnist["test"], 200, "cpu"), 0.1, 0.1, 1, False
    )
    assert fgsm_clean == clean and robust <= fgsm < clean, "PGD-20 should beat FGSM"


@pytest.mark.slow
def test_torchattacks_agrees_on_robust_accuracy(fmnist):
    torchattacks = pytest.importorskip("torchattacks")
    model = fmnist["model"]
    images, labels = fmnist["test"]
    x = images.float() / 255
    attack = torchattacks.PGD(model, eps=0.1, alpha=0.01, steps=20, random_start=False)
    theirs = (model(attack(x, labels)).argmax(1) == labels).float().mean().item()
    ours_adv = pgd_attack(model, x, labels, 0.1, 0.01, 20, random_start=False)
    ours = (model(ours_adv).argmax(1) == labels).float().mean().item()
    assert abs(ours - theirs) <= 0.02, f"ours {ours:.3f}, torchattacks {theirs:.3f}"


@pytest.mark.slow
def test_adversarial_training_resists_the_attack(fmnist):
    images, labels = fmnist["train"]
    settings = dict(eps=0.1, alpha=0.05, steps=2)  # a cheap PGD-2 for training
    robust_model = train_small_cnn(images[:2000], labels[:2000], epochs=2, adversarial=settings)
    test = TensorBatches(*fmnist["test"], 200, "cpu")
    clean, robust = robust_accuracy(robust_model, test, 0.1, 0.01, 20)
    assert robust >= fmnist["robust"] + 0.2, f"robust {robust:.3f} vs {fmnist['robust']:.3f}"
    assert clean >= 0.6, f"clean accuracy of the robust model {clean:.3f}"


# ---------------------------------------------------------------- command line


def fake_question4(monkeypatch, n=40):
    """A STAND-IN for a finished Question 4 run (a small model and random test images), to
    test the command line's files without a training run."""
    model = small_model(size=28)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)

    def load_question4_run(run_dir):
        if not (Path(run_dir) / "summary.json").is_file():
            raise UserError(f"{run_dir} is not a Question 4 run")
        cfg = types.SimpleNamespace(dataset="fashion_mnist")
        return TrainedModel(None, cfg, model, "stand-in")

    def test_images(trained, count=None, data_dir=None):
        x, y = images[:count], labels[:count]
        return TestImages(x, x.float() / 255, y, True, None)

    monkeypatch.setattr(attack, "load_question4_run", load_question4_run)
    monkeypatch.setattr(attack, "test_images", test_images)


def test_cli_writes_json_and_pictures(tmp_path, monkeypatch, capsys):
    fake_question4(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    # examples=2: two rows of pictures (the command line draws 8; each row costs matplotlib
    # about 0.2 s)
    result = attack.run_attack(
        run, pgd_attack, eps=0.1, alpha=0.02, steps=3, sweep=[0.0, 0.1], batch_size=16,
        device="cpu", examples=2,
    )  # fmt: skip
    saved = json.loads((run / "adversarial.json").read_text())
    assert saved == result
    assert saved["num_images"] == 40 and saved["synthetic"] is True
    assert saved["eps"] == 0.1 and saved["steps"] == 3 and saved["targeted"] is False
    assert 0 <= saved["robust_acc"] <= saved["clean_acc"] <= 1
    assert [r["eps"] for r in saved["sweep"]] == [0.0, 0.1]
    assert saved["sweep"][0]["robust_acc"] == saved["clean_acc"]  # eps 0 changes nothing
    for name in ("adversarial_examples.png", "adversarial_sweep.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "SYNTHETIC DATA" in out and "accuracy under attack" in out
    again = attack.run_attack(
        run, pgd_attack, eps=0.05, steps=2, targeted=True, limit=8, device="cpu", examples=2
    )
    assert "replacing the previous" in capsys.readouterr().out
    assert again["num_images"] == 8 and "target_success_rate" in again


def test_least_likely_targets_and_the_images_in_tensorboard(tmp_path, monkeypatch, capsys):
    """CS771's attack: aim at the class the model is least confident in; every batch's clean
    and attacked images go to TensorBoard as Org_Image / Adv_Image, one step per batch."""
    logits = torch.tensor([[0.0, 3.0, -2.0, 1.0], [5.0, -1.0, 0.5, -0.5]])
    labels = torch.tensor([1, 0])
    assert attack.attack_targets("least_likely", logits, labels).tolist() == [2, 1]
    assert attack.attack_targets("next", logits, labels).tolist() == [2, 1]
    assert attack.attack_targets("least_likely", logits, torch.tensor([3, 3])).tolist() == [2, 1]
    with pytest.raises(ValueError, match="least_likely"):
        attack.attack_targets("most_likely", logits, labels)

    fake_question4(monkeypatch, n=40)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    result = attack.run_attack(
        run, pgd_attack, eps=0.3, alpha=0.1, steps=5, targeted=True, target="least_likely",
        batch_size=16, device="cpu", examples=0, tensorboard_images=4,
    )  # fmt: skip
    assert result["target"] == attack.TARGETS["least_likely"] and result["targeted"] is True
    assert "targeted (least-likely class)" in capsys.readouterr().out
    assert 0 < result["target_success_rate"] <= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard" / "adversarial"), size_guidance={"images": 0})
    events.Reload()
    for tag in ("Org_Image", "Adv_Image"):
        assert [e.step for e in events.Images(tag)] == [0, 1, 2], tag  # 40 images, batches of 16
    with pytest.raises(UserError, match="--target sideways is unknown"):
        attack.run_attack(run, pgd_attack, targeted=True, target="sideways", device="cpu")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "adversarial.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eps", "1.5"], "--eps 1.5 is outside [0, 1]"),
        (["--steps", "0"], "--steps 0 must be at least 1"),
        (["--sweep", "0,abc"], "is not a comma-separated list"),
        (["--sweep", "0,2"], "--sweep values must be in [0, 1]"),
        (["--run", "does/not/exist"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    if "--run" not in args:
        args = ["--run", str(tmp_path), *args]
    with pytest.raises(SystemExit) as exit_:
        adversarial.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert err.strip().count("\n") == 0, err
    assert message in err


def not_question_4_message():
    try:
        import kit.scratch.recipe  # noqa: F401
    except ModuleNotFoundError:
        return "Question 4 (training from scratch) is not in this kit"
    return "is not a Question 4 run"


def test_cli_refuses_a_run_that_is_not_question_4_in_process(tmp_path, capsys):
    """adversarial.main as the command line runs it: one line on stderr, exit status 1."""
    (tmp_path / "config.yaml").write_text("method: vpt\n")  # a flower run's settings
    with pytest.raises(SystemExit) as exit_:
        adversarial.main(["--run", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert err.strip().count("\n") == 0, err
    assert not_question_4_message() in err


@pytest.mark.slow
def test_cli_refuses_a_run_that_is_not_question_4(tmp_path):
    """In a real process: one line on stderr, exit status 1."""
    (tmp_path / "config.yaml").write_text("method: vpt\n")  # a flower run's settings
    proc = run_cli("--run", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not_question_4_message() in proc.stderr


TINY_ADVERSARIAL_PRESET = """
scratch:
  tiny_adv:
    dataset: fashion_mnist
    max_train_images: 256
    val_images: 128
    model: cnn
    cnn_channels: [8]
    cnn_convs_per_stage: 1
    cnn_hidden: 32
    custom_conv: false
    augment: none
    epochs: 1
    batch_size: 64
    eval_batch_size: 64
    warmup_epochs: 0
    precision: fp32
    device: cpu
    adversarial: {eps: 0.1, alpha: 0.05, steps: 1, eval_steps: 2, eval_images: 64}
"""


@pytest.mark.slow
def test_question4_adversarial_run_and_the_cli_on_it(tmp_path):
    """A tiny real-Fashion-MNIST adversarial run of demo_scratch.py (the 'adversarial:' key),
    then the command line on it."""
    if not FMNIST.is_dir():
        pytest.skip(
            f"real Fashion-MNIST not found in {FMNIST}; apt-get install -y dataset-fashion-mnist"
        )
    (tmp_path / "tiny.yml").write_text(TINY_ADVERSARIAL_PRESET)
    run = tmp_path / "run"
    demo = [sys.executable, str(ROOT / "demo_scratch.py"), "--config", str(tmp_path / "tiny.yml")]
    proc = subprocess.run(
        [*demo, "--exp_name", "tiny_adv", "--output_dir", str(run)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PGD-2 eps 0.1 on 64 validation images" in (run / "train.log").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_robust_acc")] == [1]
    proc = run_cli("--run", str(run), "--steps", "2", "--limit", "64", "--sweep", "0,0.1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((run / "adversarial.json").read_text())
    assert saved["num_images"] == 64 and saved["synthetic"] is False
    assert saved["robust_acc"] <= saved["clean_acc"]
    assert (run / "adversarial_examples.png").is_file() and (
        run / "adversarial_sweep.png"
    ).is_file()
    bad = {"eps": 0.1, "epsilon": 1}
    (tmp_path / "bad.yml").write_text(TINY_ADVERSARIAL_PRESET.replace(
        "adversarial: {eps: 0.1, alpha: 0.05, steps: 1, eval_steps: 2, eval_images: 64}",
        f"adversarial: {bad}",
    ))  # fmt: skip
    bad_demo = [*demo[:-1], str(tmp_path / "bad.yml")]
    proc = subprocess.run(
        [*bad_demo, "--exp_name", "tiny_adv", "--output_dir", str(tmp_path / "bad")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "unknown key 'epsilon'" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "bad").exists()
