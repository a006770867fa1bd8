"""Exercise 1.13 (CaptioningTransformer): every known mistake is named on deliberately wrong
code, the stand-ins its test uses equal the kit's own layers, and XCS231N's sanity check (50
training captions overfit to a loss below 0.05) holds for the reference solution on a small
COCO folder in CS231n's format."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_exercise_bank import SOURCE, edit, load_module, method_for, run_student_tests

import transformer_utils as tu
from kit.caption.coco import load_coco_data, write_coco_files
from kit.exercise_checks.stand_ins import TorchDecoderLayer, TorchSinusoidalEncoding1D


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FORWARD_END = "        return self.output(self.norm(words))  # (N, T, V)"
LAYER_CALL = "words = layer(words, memory, self_attn_mask=mask)"
WORDS = "words = self.positional_encoding(self.embedding(captions))"
# (snippet of the reference solution, wrong replacement, [another pair,] words of the
# expected diagnosis)
MISTAKES = [
    (LAYER_CALL, "words = layer(words, memory)", "causal mask is not passed"),
    (
        "mask = causal_mask(T, device=captions.device)",
        "mask = causal_mask(T, device=captions.device).T",
        "causal mask is transposed",
    ),
    (WORDS, "words = self.embedding(captions)", "positional encoding is missing"),
    (
        f"{WORDS}  # (N, T, W)",
        "words = self.embedding(captions)",
        "mask = causal_mask(T, device=captions.device)",
        "memory = self.positional_encoding(memory)\n        mask = causal_mask(T)",
        "positional encoding is added to the image features",
    ),
    (LAYER_CALL, "words = layer(words, words, self_attn_mask=mask)", "image is not used"),
    (FORWARD_END, "        return self.output(words)", "final LayerNorm self.norm is skipped"),
    (FORWARD_END, "        return self.norm(words)", "scores are the decoder's hidden states"),
    (
        FORWARD_END,
        "        return self.output(self.norm(words)).softmax(-1)",
        "scores are softmax probabilities",
    ),
    (
        "            partial = torch.cat([partial, word[:, None]], dim=1)  # (N, t + 2)",
        "            pass",
        "does not feed its own words back",
    ),
    (
        "            scores = self.forward(features, partial)  # (N, t + 1, V)\n"
        "            word = scores[:, -1].argmax(dim=-1)",
        "            if t == 0:\n"
        "                scores = self.forward(features, torch.cat([partial, captions[:, :-1]], 1))\n"
        "            word = scores[:, t].argmax(dim=-1)",
        "predicts every position in one pass",
    ),
    (
        "        return captions\n        # END SOLUTION\n\n\ndef _caption_init",
        "        return partial[:, :max_length]\n        # END SOLUTION\n\n\ndef _caption_init",
        "begin with <START>",
    ),
    (
        "            word = word.masked_fill(done, self._null)  # (N,)\n",
        "",
        "still written after <END>",
    ),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m[-1] for m in MISTAKES])
def test_known_mistake_is_named(mistake, tmp_path, monkeypatch):
    *edits, diagnosis = mistake
    source = SOURCE
    for old, new in zip(edits[::2], edits[1::2]):
        source = edit(source, old, new)
    module = load_module(source, tmp_path)
    name = method_for("captioning")
    status, message = run_student_tests(module, monkeypatch, [name])[name]
    assert status == "fail", message
    assert "known mistake" in message and diagnosis in message, message


def test_stand_ins_equal_the_kit_layers():
    torch.manual_seed(0)
    layer = tu.TransformerDecoderLayer(12, 3, 2.0).eval()
    for p in layer.parameters():
        p.data.normal_(0, 0.3)
    x, memory = torch.randn(2, 5, 12), torch.randn(2, 4, 12)
    mask = tu.causal_mask(5)
    memory_mask = torch.rand(2, 5, 4) > 0.3
    memory_mask[..., 0] = True
    with torch.no_grad():
        for args in ((mask, None), (mask, memory_mask), (None, None)):
            expected = layer(x, memory, *args)
            assert torch.allclose(TorchDecoderLayer(layer)(x, memory, *args), expected, atol=1e-5)
        x = torch.randn(2, 7, 10)
        expected = tu.SinusoidalPositionalEncoding1D()(x)
        assert torch.allclose(TorchSinusoidalEncoding1D()(x), expected, atol=1e-6)


def test_sample_writes_null_after_end_and_no_start():
    word_to_idx = {"<NULL>": 0, "<START>": 1, "<END>": 2, "cat": 3, "dog": 4}
    torch.manual_seed(0)
    model = tu.CaptioningTransformer(word_to_idx, 6, 8, num_heads=2, num_layers=1).eval()
    with torch.no_grad():
        model.output.bias.copy_(torch.tensor([-9.0, -9.0, 0.0, 0.0, 0.0]))
        model.output.bias[2] = 3.0  # <END> first
        sample = model.sample(torch.randn(3, 6), max_length=4)
    assert sample.dtype == torch.int64 and sample.shape == (3, 4)
    assert sample[:, 0].tolist() == [2, 2, 2] and (sample[:, 1:] == 0).all()


# ---------------------------------------------------------------- XCS231N's sanity check


def small_coco(folder, seed=0, vocab=40, train=200, val=20, dim=64):
    """A COCO captioning folder in CS231n's format: random captions of 5-15 words (length 17
    with <START>, <END> and <NULL> padding), one image (random features) per caption."""
    rng = np.random.default_rng(seed)
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(vocab)]

    def captions(n):
        c = np.zeros((n, 17), np.int32)
        c[:, 0] = 1
        for row in range(n):
            length = rng.integers(5, 16)
            c[row, 1 : length + 1] = rng.integers(4, len(words), length)
            c[row, length + 1] = 2
        return c

    counts = {"train": train, "val": val}
    write_coco_files(
        folder,
        {s: captions(n) for s, n in counts.items()},
        {s: rng.permutation(n) for s, n in counts.items()},
        {s: rng.standard_normal((n, dim)).astype(np.float32) for s, n in counts.items()},
        words,
        {s: [f"http://example.org/{s}/{i}.jpg" for i in range(n)] for s, n in counts.items()},
    )


def overfit(data, wordvec_dim, lr, epochs=100, batch_size=25):
    """CS231n's notebook loop: Adam, batches of 25, loss over the words (not <NULL>)."""
    torch.manual_seed(231)
    model = tu.CaptioningTransformer(
        data["word_to_idx"], input_dim=data["train_features"].shape[1], wordvec_dim=wordvec_dim,
        num_heads=2, num_layers=2, max_length=30,
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    captions = torch.as_tensor(data["train_captions"], dtype=torch.long)
    features = torch.as_tensor(data["train_features"])[data["train_image_idxs"]]
    gen, losses = torch.Generator().manual_seed(0), []
    for _ in range(epochs):
        order = torch.randperm(len(captions), generator=gen)
        for start in range(0, len(captions), batch_size):
            idx = order[start : start + batch_size]
            words, targets = captions[idx, :-1], captions[idx, 1:]
            scores = model(features[idx], words)  # (B, 16, V)
            loss = F.cross_entropy(scores.flatten(0, 1), targets.flatten(), ignore_index=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return model, losses


def test_overfits_50_training_captions(tmp_path):
    """XCS231N's check on 50 captions of a small CS231n-format folder, read by the kit's
    loader; width 64 instead of the notebook's 256 (slow test below) keeps it to seconds."""
    small_coco(tmp_path)
    data = load_coco_data(tmp_path, max_train=50)
    assert data["train_captions"].shape == (50, 17)
    model, losses = overfit(data, wordvec_dim=64, lr=3e-3)
    assert losses[0] > 3.0 and losses[-1] < 0.05, losses[-5:]
    features = torch.as_tensor(data["train_features"])[data["train_image_idxs"]]
    sample = model.eval().sample(features, max_length=16)
    truth = torch.as_tensor(data["train_captions"], dtype=torch.long)[:, 1:]
    assert torch.equal(sample, truth), "greedy sampling reproduces the memorised captions"


@pytest.mark.slow
def test_overfits_50_training_captions_with_the_notebook_settings(tmp_path):
    """The notebook's own settings: wordvec_dim 256, 2 heads, 2 layers, lr 1e-3, 100 epochs."""
    small_coco(tmp_path)
    _, losses = overfit(load_coco_data(tmp_path, max_train=50), wordvec_dim=256, lr=1e-3)
    assert losses[-1] < 0.05, losses[-5:]
