"""report.py on real run folders: two flower runs and a PixMo run made by the demos themselves
(their main() in this process: tiny presets on small synthetic data, made once per module),
plus edited copies of them. The slow tier adds report.py's command line in a real process."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)

import demo_flower
import demo_pixmo
import report
import transformer_utils
from kit import finished_runs
from kit.errors import UserError
from kit.flower import synthetic as synthetic_flowers
from kit.report import ablation, attention, common, curves, posemb, preview, scalars

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(
    os.environ, VIT_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=""
)

PRESETS = """
flower:
  tiny: &flower_tiny
    encoder_name: vit_tiny_test
    method: vpt
    num_prompts: 2
    optimizer: adamw
    lr: 0.02
    scheduler: constant
    epochs: 3
    batch_size: 16
    eval_batch_size: 64
    image_size: 32
    resize_size: 36
    precision: fp32
    device: cpu
  tiny_p1:
    <<: *flower_tiny
    num_prompts: 1
pixmo:
  tiny:
    model: point
    tokens_side: 2
    crop_size: 32
    crop_stream: false  # one pass through the ResNet per image
    num_layers: 1
    head_hidden: 32
    trainable_from: none
    epochs: 2
    batch_size: 8
    eval_batch_size: 16
    image_size: 32
    synthetic_sizes: [16, 8, 8]  # preview draws 16 training images
    synthetic_min_side: 40
    synthetic_max_side: 80
    download_weights: false
    bn_calibration_images: 16
    device: cpu
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder as a student's: synthetic data where the demos look for it, and three runs,
    each made by its demo's main() in this process (as ``python demo_*.py`` would, without
    starting Python and torch again)."""
    root = tmp_path_factory.mktemp("report")
    counts = {"train": 96, "val": 32, "test": 40}
    # The demo uses a ready synthetic folder as it is (and marks the run synthetic).
    synthetic_flowers.generate(
        root / "synthetic-data" / "flower-dataset-reduced", seed=1, counts=counts, log=lambda _: 0
    )
    (root / "presets.yml").write_text(PRESETS)
    jobs = {
        "a": (demo_flower, "tiny"),
        "b": (demo_flower, "tiny_p1"),
        "pix": (demo_pixmo, "tiny"),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the presets' data folders are relative, as in a student's folder
        mp.setenv("VIT_OFFLINE", "1")
        for name, (demo, preset) in jobs.items():
            args = ["--config", "presets.yml", "--exp_name", preset, "--output_dir", f"runs/{name}"]
            assert demo.main(args) == 0, f"{name}: see the captured output"
    for handler in logging.getLogger("train").handlers:  # the last run's train.log stays open
        handler.close()
    return root


@pytest.fixture
def cwd(work, monkeypatch):
    """Run report functions from the student's folder (config.yaml's data_dir is relative)."""
    monkeypatch.chdir(work)
    return work


def history(run):
    return torch.load(Path(run) / "checkpoint.pt", weights_only=False)["history"]


def copy_run(work, name, new):
    dest = work / "runs" / new
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(work / "runs" / name, dest)
    return dest


def assert_image(path, size_inches):
    """A PNG of the expected size in pixels that is not blank."""
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    expected = tuple(round(s * common.DPI) for s in size_inches)
    assert (image.shape[1], image.shape[0]) == expected
    assert image.std() > 10, "the image is (nearly) blank"


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "report.py"), *args],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def one_line_error(result_or_capsys_err: str) -> str:
    lines = [line for line in result_or_capsys_err.splitlines() if line.strip()]
    assert len(lines) == 1, result_or_capsys_err
    assert lines[0].startswith("error: ") and "Traceback" not in result_or_capsys_err
    return lines[0]


# ---------------------------------------------------------------------- curves


def test_curves_png_and_pdf_from_the_event_files(cwd, tmp_path, monkeypatch):
    runs = [finished_runs.read_run(cwd / "runs" / n) for n in ("a", "b", "pix")]
    # The scalars are the Trainer's history, read back by TensorBoard's reader.
    for run in runs:
        values = scalars.read_scalars(run)
        for key in ("train_loss", "val_acc"):
            got = [v for _, v in values[key]]
            assert np.allclose(got, [h[key] for h in history(run.path)], rtol=1e-6)
    drawn = []  # each panel's labelled lines: (label, epochs, values)
    save_figure = curves.save_figure

    def keep_lines(fig, out):
        drawn.append({
            ax.get_title(): [
                (line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
                for line in ax.get_lines() if not line.get_label().startswith("_")
            ]
            for ax in fig.axes
        })  # fmt: skip
        return save_figure(fig, out)

    monkeypatch.setattr(curves, "save_figure", keep_lines)
    out = tmp_path / "curves.png"
    assert report.main(["curves", "runs/a", "runs/b", "runs/pix", "--out", str(out)]) == 0
    assert_image(out, curves.CURVES_FIGSIZE)
    for tag, title, _ in curves.CURVE_PANELS:  # every run in every panel, its whole history
        lines = drawn[0][title]
        assert [label for label, _, _ in lines] == [
            f"{n} [synthetic data]" for n in ("a", "b", "pix")
        ]
        for (_, epochs, values), run in zip(lines, runs):
            h = history(run.path)
            assert epochs == [e["epoch"] for e in h], title
            assert np.allclose(values, [e[tag] for e in h], rtol=1e-6), title
    pdf = tmp_path / "curves.pdf"
    assert report.main(["curves", "runs/a", "--out", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF")


# ---------------------------------------------------------------------- ablation


def test_ablation_names_exactly_the_changed_settings(cwd, tmp_path):
    unfinished = copy_run(cwd, "a", "unfinished")  # as if still running: 3 of 5 epochs done
    config = yaml.safe_load((unfinished / "config.yaml").read_text())
    config["epochs"] = 5
    (unfinished / "config.yaml").write_text(yaml.safe_dump(config))
    log = (unfinished / "train.log").read_text()
    (unfinished / "train.log").write_text(log[: log.index("best val acc")])

    out = tmp_path / "table.md"
    args = ["ablation", "runs/b", "runs/unfinished", "--base", "runs/a", "--out", str(out)]
    assert report.main(args) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][2:]
    assert [r.split(" | ")[0] for r in rows] == [
        f"| {n} [synthetic data]" for n in ("a", "b", "unfinished")
    ]
    cells = [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]
    assert cells[0][1] == "(base)"
    assert cells[1][1] == "num_prompts 2 -> 1"  # the only difference between the presets
    assert cells[2][1] == "epochs 3 -> 5"
    for row, name in zip(cells, ("a", "b", "unfinished")):
        h = history(cwd / "runs" / name)
        best = max(h, key=lambda e: e["val_acc"])
        assert row[2] == f"{best['val_acc']:.4f}" and row[3] == str(best["epoch"])
        assert row[5].endswith(" s")  # training time
    logged = (cwd / "runs" / "a" / "train.log").read_text().split("synthetic test accuracy ")[1]
    assert cells[0][4] == f"{float(logged.split()[0]):.4f} (synthetic)"
    assert cells[2][4] == "-"  # the unfinished run has no test accuracy yet
    assert [r[6] for r in cells] == ["finished", "finished", "in progress (3/5 epochs)"]

    latex = ablation.write_ablation(
        [finished_runs.read_run("runs/b")], finished_runs.read_run("runs/a"), None, "latex"
    )
    assert r"num\_prompts 2 $\rightarrow$ 1" in latex and latex.count(r" \\") == 3  # head + 2


def test_a_run_stopped_before_its_first_epoch_is_a_row_and_gets_its_resume_command(
    cwd, tmp_path, capsys
):
    """A run with settings but no finished epoch (stopped, or still starting): the ablation
    shows it as a row; the figures that need a trained model say how to continue it."""
    stopped = copy_run(cwd, "a", "stopped")
    for name in ("tensorboard", "best.pt", "checkpoint.pt"):
        target = stopped / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out = tmp_path / "table.md"
    assert report.main(["ablation", "runs/stopped", "--base", "runs/a", "--out", str(out)]) == 0
    row = [r for r in out.read_text().splitlines() if r.startswith("| stopped")][0]
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[2:5] == ["-", "-", "-"] and cells[6] == "in progress (0/3 epochs)", cells
    for args in (["curves", "runs/stopped"], ["attention", "--run", "runs/stopped"]):
        capsys.readouterr()
        assert report.main([*args, "--out", str(tmp_path / "x.png")]) == 1
        line = one_line_error(capsys.readouterr().err)
        assert "if it stopped, continue it with python demo_flower.py" in line, line
        assert "--output_dir runs/stopped --resume" in line and "exp_name tiny" in line, line


def test_ablation_refuses_runs_of_two_demos(cwd, capsys):
    assert report.main(["ablation", "runs/pix", "--base", "runs/a"]) == 1
    assert "an ablation compares runs of one demo" in one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------------- attention


def reference_rollout(attentions):
    """Rollout written out independently: head mean + identity, rows renormalised, multiplied."""
    result = None
    for a in attentions:
        a = a.double().mean(1) + torch.eye(a.shape[-1], dtype=torch.float64)
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result[:, 0]


def test_attention_maps_come_from_the_model(cwd, tmp_path):
    maps = attention.attention_maps("runs/a", images=3, rollout=True)
    assert "16 of 16 test predictions agree" in maps["note"]
    b, heads, g, p = 3, 2, 4, 2  # vit_tiny_test: 2 heads, 2 layers, 32/8 = 4 patches a side
    assert maps["attentions"][0].shape == (b, heads, 1 + p + g * g, 1 + p + g * g)
    last = maps["attentions"][-1]
    assert torch.equal(maps["last_heads"], last[:, :, 0, 1 + p :].reshape(b, heads, g, g))
    assert torch.allclose(maps["last_mean"], maps["last_heads"].mean(1))
    assert torch.allclose(maps["layer_means"][:, 0], maps["attentions"][0][:, :, 0, 1 + p :].mean(1).reshape(b, g, g))  # fmt: skip
    # The rollout is the kit's attention_rollout of these maps, prompt columns left out.
    kit = transformer_utils.attention_rollout(maps["attentions"])[1][:, p:]
    assert torch.allclose(maps["rollout"], kit.reshape(b, g, g))
    mine = reference_rollout(maps["attentions"])[:, 1 + p :].float()
    assert torch.allclose(maps["rollout"].reshape(b, -1), mine, atol=1e-5)

    out = tmp_path / "att.png"
    assert report.main(["attention", "--run", "runs/a", "--images", "3", "--rollout", "--out", str(out)]) == 0  # fmt: skip
    assert_image(out, attention.attention_figsize(3, heads, 2))

    # Other trained weights (the prompts) give other maps.
    changed = copy_run(cwd, "a", "changed")
    best = torch.load(changed / "best.pt", weights_only=False)
    best["model"]["prompts"] = torch.randn_like(best["model"]["prompts"])
    torch.save(best, changed / "best.pt")
    other = attention.attention_maps(changed, images=3, check=False)
    assert not torch.allclose(other["last_heads"], maps["last_heads"], atol=1e-4)


def test_a_backbone_that_cannot_be_rebuilt_draws_nothing(cwd):
    other_seed = copy_run(cwd, "a", "other_seed")  # the frozen random backbone is redrawn
    config = yaml.safe_load((other_seed / "config.yaml").read_text())
    config["seed"] = 123
    (other_seed / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="cannot be reproduced"):
        attention.attention_maps(other_seed, images=2)


def test_rollout_not_written_yet_is_one_line(cwd, monkeypatch, capsys, tmp_path):
    def stub(attentions):
        raise NotImplementedError("attention_rollout is not implemented yet (exercise 1.10)")

    monkeypatch.setattr(transformer_utils, "attention_rollout", stub)
    args = ["attention", "--run", "runs/a", "--rollout", "--out", str(tmp_path / "x.png")]
    assert report.main(args) == 1
    assert "drop --rollout" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------- position embeddings


def test_posemb_similarity_of_the_models_embeddings(cwd, tmp_path):
    emb = posemb.learned_position_embeddings("runs/a")
    g = 4
    assert emb["similarity"].shape == (g, g, g, g)
    vit = attention.load_vit(finished_runs.read_run("runs/a"), check=False)
    pos = vit.trained.model.backbone.encoder.pos_embedding[0, 1:].detach()  # CLS dropped
    i, j, k, m = 1, 2, 3, 0
    a, c = pos[i * g + j], pos[k * g + m]
    assert torch.isclose(emb["similarity"][i, j, k, m], torch.nn.functional.cosine_similarity(a, c, 0), atol=1e-6)  # fmt: skip
    for r in range(g):
        for s in range(g):
            assert torch.isclose(emb["similarity"][r, s, r, s], torch.tensor(1.0), atol=1e-5)
    assert "RANDOM" in emb["note"]  # a frozen random backbone learned nothing: said so
    out = tmp_path / "pos.png"
    assert report.main(["posemb", "--run", "runs/a", "--out", str(out)]) == 0
    assert_image(out, posemb.posemb_figsize(g))


# ---------------------------------------------------------------------- preview


@pytest.mark.parametrize("dataset", ["flower", "pixmo"])
def test_preview_grid_says_synthetic(cwd, tmp_path, dataset):
    images, titles, points, synthetic, _ = preview.preview_examples(dataset)
    assert synthetic and len(images) == len(titles) == 16
    assert (points is not None) == (dataset == "pixmo")
    if dataset == "flower":
        assert len(set(titles)) == 16  # one image of each of 16 classes
    out = tmp_path / f"{dataset}.png"
    assert report.main(["preview", dataset, "--out", str(out)]) == 0
    assert_image(out, preview.PREVIEW_FIGSIZE)


def test_preview_scratch_without_question_4(cwd, tmp_path, capsys):
    if (ROOT / "demo_scratch.py").exists():
        pytest.skip("Question 4 is in this kit")
    assert report.main(["preview", "scratch", "--out", str(tmp_path / "s.png")]) == 1
    assert (
        one_line_error(capsys.readouterr().err) == "error: " + finished_runs.NOT_IN_KIT["scratch"]
    )


# ---------------------------------------------------------------------- bad input


def test_bad_input_is_one_line(cwd, tmp_path, capsys):
    (cwd / "not_a_run").mkdir(exist_ok=True)
    no_events = copy_run(cwd, "a", "no_events")
    shutil.rmtree(no_events / "tensorboard")
    cases = [
        (["curves", "runs/nowhere", "--out", "c.png"], "does not exist"),
        (["curves", "not_a_run", "--out", "c.png"], "no config.yaml"),
        (
            ["curves", "runs/no_events", "--out", "c.png"],
            "no TensorBoard events (tensorboard/) yet",
        ),
        (["attention", "--run", "runs/pix", "--out", "c.png"], "need a ViT run"),
        (["posemb", "--run", "runs/pix", "--out", "c.png"], "need a ViT run"),
        (["curves", "runs/a", "--out", "c.jpg"], "ending in .png, .pdf, .svg"),
        (["curves", "runs/a", "--out", "missing/c.png"], "does not exist; create it"),
    ]
    for args, needle in cases:
        assert report.main(args) == 1, args
        assert needle in one_line_error(capsys.readouterr().err), args
    assert not (cwd / "c.png").exists()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors: one line too
        report.main(["curves", "runs/a"])  # --out forgotten
    assert exit_info.value.code == 2 and "--out" in one_line_error(capsys.readouterr().err)


@pytest.mark.slow
def test_command_line_errors_are_one_line(work, capsys):
    """In a real process (test_bad_input_is_one_line checks the same errors in-process)."""
    result = run_cli("attention", "--run", "runs/pix", "--out", "x.png", cwd=work)
    assert result.returncode == 1 and "need a ViT run" in one_line_error(result.stderr)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors: one line too
        report.main(["curves", "runs/a"])  # --out forgotten
    assert exit_info.value.code == 2 and "--out" in one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------------- Question 4 (contract)


class FakeScratchModel(torch.nn.Module):
    """A Question 4 model as Q4_CONTRACT says: float images in [0, 1], attention maps,
    ``patch_grid`` and ``learned_position_embeddings()``; here the kit's own small ViT."""

    def __init__(self, pos_embedding):
        super().__init__()
        torch.manual_seed(0)
        self.vit = transformer_utils.VisionTransformer(
            img_size=16, patch_size=4, in_channels=1, num_classes=10, embed_dim=16, depth=2,
            num_heads=2, pos_embedding=pos_embedding,
        )  # fmt: skip
        if pos_embedding == "learned1d":
            torch.nn.init.normal_(self.vit.pos_embed.pos_embedding)
        self.patch_grid = 4

    def forward(self, x, return_attention=False):
        return self.vit((x - 0.5) / 0.25, return_attention=return_attention)

    def learned_position_embeddings(self):
        if not isinstance(self.vit.pos_embed, transformer_utils.LearnedPositionalEncoding1D):
            return None
        return self.vit.pos_embed.pos_embedding[0].reshape(4, 4, -1)


@pytest.fixture
def fake_q4(tmp_path, monkeypatch):
    """A fake demo_scratch module and a finished Question 4 run folder written by the contract."""
    from dataclasses import dataclass

    from torch.utils.tensorboard import SummaryWriter

    @dataclass
    class ScratchConfig:
        dataset: str = "fashion_mnist"
        model: str = "vit"
        patch_size: int = 4
        pos_embedding: str = "learned1d"
        epochs: int = 2

    def load_run_model(run_dir, which="best"):
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        cfg = ScratchConfig(**config)
        return cfg, FakeScratchModel(cfg.pos_embedding).eval()

    def load_split(cfg, split, data_dir=None):
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (20, 1, 16, 16), dtype=torch.uint8, generator=g)
        return images, torch.arange(20) % 10, True

    fake = type(sys)("kit.scratch.recipe")  # a stand-in for Question 4's recipe
    fake.ScratchConfig, fake.load_run_model, fake.load_split = (
        ScratchConfig,
        load_run_model,
        load_split,
    )
    fake.datasets = type(sys)("kit.scratch.datasets")
    fake.datasets.CLASS_NAMES = {"fashion_mnist": [f"item {i}" for i in range(10)]}
    monkeypatch.setattr(finished_runs, "scratch_recipe", lambda: fake)

    def make(name, **changes):
        run = tmp_path / name
        run.mkdir()
        config = dict(vars(ScratchConfig()), **changes)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        with SummaryWriter(run / "tensorboard") as writer:
            for epoch, acc in ((1, 0.5), (2, 0.75)):
                for tag in ("train_loss", "val_loss", "train_acc", "val_acc"):
                    writer.add_scalar(tag, acc, epoch)
            writer.add_scalar("test_acc", 0.7, 2)
        summary = dict(synthetic=True, best_val_acc=0.75, best_epoch=2, test_acc=0.7,
                       train_seconds=95.0, finished=True)  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "best.pt").write_bytes(b"")  # there: the stand-in recipe above builds the model
        return run

    return make


def test_question_4_runs_by_the_contract(fake_q4, tmp_path):
    vit = fake_q4("vit")
    maps = attention.attention_maps(vit, images=2, rollout=True)
    model = FakeScratchModel("learned1d").eval()
    images, _, _ = finished_runs.scratch_recipe().load_split(None, "test")
    _, attentions = model(images[:2].float() / 255, return_attention=True)
    assert torch.allclose(maps["last_heads"], attentions[-1][:, :, 0, 1:].reshape(2, 2, 4, 4))
    assert maps["class_names"][3] == "item 3" and maps["synthetic"]
    args = ["attention", "--run", str(vit), "--images", "2", "--rollout"]
    assert report.main([*args, "--out", str(tmp_path / "a.png")]) == 0

    emb = posemb.learned_position_embeddings(vit)
    pe = model.learned_position_embeddings().detach()
    cos = torch.nn.functional.cosine_similarity(pe[0, 1], pe[2, 3], dim=0)
    assert torch.isclose(emb["similarity"][0, 1, 2, 3], cos, atol=1e-6)
    with pytest.raises(UserError, match="nothing is learned"):
        posemb.learned_position_embeddings(fake_q4("sin", pos_embedding="sinusoidal"))
    with pytest.raises(UserError, match="not a transformer"):
        attention.attention_maps(fake_q4("cnn", model="cnn"))

    rows = ablation.ablation_rows(
        [finished_runs.read_run(vit)], finished_runs.read_run(fake_q4("base", epochs=1))
    )
    assert rows[1].changes == [("epochs", "1", "2")]
    assert (rows[1].test_acc, rows[1].synthetic, rows[1].seconds) == (0.7, True, 95.0)
    assert rows[1].status == "finished"
    assert report.main(["preview", "scratch", "--out", str(tmp_path / "p.png")]) == 0
    assert_image(tmp_path / "p.png", preview.PREVIEW_FIGSIZE)
