"""Predictions made on synthetic data cannot be uploaded by mistake.

The demos mark such a file on its first line (training_utils.SYNTHETIC_MARKER) and say so
next to the path they print; the grader gives it 0 points with one line that says why.
Real-data predictions keep the plain format: one integer per line.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from autograder.assignment import load_assignment
from autograder.predictions import grade_predictions, is_synthetic
from kit.runs import SYNTHETIC_MARKER, prepare_run_dir, read_predictions, write_predictions
from kit.trainer import TrainConfig, Trainer, fit_and_predict

ROOT = Path(__file__).resolve().parents[1]
PARTS = {
    p.file: p
    for p in load_assignment(ROOT / "instructor" / "assignments" / "cs444_mp3.yml").predictions
}
FLOWER = PARTS["test_flower.txt"]


def test_real_predictions_keep_the_plain_format(tmp_path):
    write_predictions(tmp_path / "test_flower.txt", [3, 1, 101])
    assert (tmp_path / "test_flower.txt").read_text() == "3\n1\n101\n"
    assert read_predictions(tmp_path / "test_flower.txt") == ([3, 1, 101], False)


def test_synthetic_predictions_start_with_the_marker(tmp_path):
    path = tmp_path / "test_flower.txt"
    write_predictions(path, [3, 1], synthetic=True)
    assert path.read_text() == f"{SYNTHETIC_MARKER}\n3\n1\n"
    assert read_predictions(path) == ([3, 1], True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_flower.txt"]  # atomic: no temp


def test_the_grader_recognises_what_the_demos_write():
    assert is_synthetic(SYNTHETIC_MARKER.encode() + b"\n1\n")
    assert is_synthetic(b"\xef\xbb\xbf" + SYNTHETIC_MARKER.encode() + b"\r\n1\r\n")  # BOM, CRLF
    assert is_synthetic(b"# synthetic data, edited by hand\n1\n")
    assert not is_synthetic(b"1\n2\n")
    assert not is_synthetic(b"")


def test_grader_gives_synthetic_predictions_no_credit_with_one_clear_line(tmp_path):
    labels = [i % FLOWER.num_classes for i in range(50)]
    path = tmp_path / "test_flower.txt"
    write_predictions(path, labels, synthetic=True)  # every prediction right, still refused
    score, accuracy, message = grade_predictions(path, labels, FLOWER)
    assert (score, accuracy) == (0.0, None)
    assert "\n" not in message
    assert message.startswith("test_flower.txt: these predictions come from synthetic data")
    assert message.endswith("No credit.")

    write_predictions(path, labels)  # the same predictions from a real run: full credit
    score, accuracy, _ = grade_predictions(path, labels, FLOWER)
    assert (score, accuracy) == (FLOWER.points, 1.0)


class _Source:
    """A minimal batch source (see trainer.py): fixed features, labels = argmax feature."""

    def __init__(self, n=24, batch=8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.labels = self.x.argmax(1)
        self.batch = batch

    def __len__(self):
        return (len(self.x) + self.batch - 1) // self.batch

    def batches(self, epoch, start=0):
        for i in range(start, len(self)):
            yield (
                self.x[i * self.batch : (i + 1) * self.batch],
                self.labels[i * self.batch : (i + 1) * self.batch],
            )

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("synthetic", [True, False])
def test_fit_and_predict_marks_the_file_and_says_so_next_to_its_path(tmp_path, synthetic):
    run = prepare_run_dir(tmp_path / "run", resume=False)
    torch.manual_seed(0)
    trainer = Trainer(
        nn.Linear(4, 4),
        _Source(),
        _Source(),
        run,
        TrainConfig(epochs=1, lr=0.1, scheduler="constant"),
        full_config={"synthetic_data": synthetic},  # what the demos save in config.yaml
    )
    _, preds = fit_and_predict(trainer, _Source(), "test_pixmo.txt")
    assert read_predictions(run / "test_pixmo.txt") == (preds, synthetic)
    lines = [ln for ln in (run / "train.log").read_text().splitlines() if "test_pixmo.txt" in ln]
    assert len(lines) == 1
    assert ("SYNTHETIC DATA, do not upload" in lines[0]) == synthetic, lines[0]
