"""Small independent models on real Fashion-MNIST, for the similarity tests.

Each honest "student" trains a softmax regression (numpy, full-batch gradient descent) on
its own random subset of the training images, at its own resolution (2x2 or 4x4 average
pooling), step count and weight decay: models that are independent, of realistic and
varied accuracy (about 0.70-0.80), and that still share the mistakes any such model makes
on the hard images. About 0.1 s each.
"""

import gzip
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")


def available():
    return (FASHION / "t10k-labels-idx1-ubyte.gz").is_file()


def _read(name, offset):
    with gzip.open(FASHION / name, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def load(train=60000, test=2000):
    """``(x_train, y_train, x_test, y_test)``: images as (n, 28, 28) floats in [0, 1]."""
    xt = _read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:train] / 255.0
    yt = _read("train-labels-idx1-ubyte.gz", 8)[:train].astype(np.int64)
    xs = _read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:test] / 255.0
    ys = _read("t10k-labels-idx1-ubyte.gz", 8)[:test].astype(np.int64)
    return xt, yt, xs, ys


def _features(x, pool):
    n = x.shape[0]
    side = 28 // pool
    f = x[:, : side * pool, : side * pool].reshape(n, side, pool, side, pool).mean(axis=(2, 4))
    f = f.reshape(n, -1)
    return np.hstack([f - 0.3, np.ones((n, 1))])


def train_predict(x_train, y_train, x_test, seed, classes=10):
    """One honest model: its predictions on ``x_test``."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(600, 2000))
    pick = rng.choice(len(x_train), size=size, replace=False)
    pool = int(rng.choice([2, 4]))
    steps = int(rng.integers(40, 120))
    decay = float(rng.choice([0.0, 1e-3, 1e-2]))
    X, y = _features(x_train[pick], pool), y_train[pick]
    Y = np.eye(classes)[y]
    w = rng.normal(0, 0.01, size=(X.shape[1], classes))
    for _ in range(steps):
        z = X @ w
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        w -= 0.5 * (X.T @ (p - Y) / size + decay * w)
    return np.argmax(_features(x_test, pool) @ w, axis=1)


def honest_predictions(count, seed=0, test=2000):
    """``(labels, [predictions of count independent models])``."""
    xt, yt, xs, ys = load(test=test)
    return ys, [train_predict(xt, yt, xs, seed * 1000 + i) for i in range(count)]


def copies_of(preds, changes, seed, classes=10, count=2):
    """``count`` uploads made from one model's predictions, each with ``changes`` lines
    set to another class at random (a student disguising a copy)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        p = np.array(preds)
        lines = rng.choice(p.size, size=changes, replace=False)
        p[lines] = (p[lines] + rng.integers(1, classes, size=changes)) % classes
        out.append(p)
    return out


if __name__ == "__main__":  # in a process of its own: one BLAS thread (see the tests)
    import sys

    count, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    labels, preds = honest_predictions(count, seed)
    xt, yt, xs, _ = load()
    source = train_predict(xt, yt, xs, seed * 1000 + 999)
    np.savez(out, labels=labels, honest=np.array(preds), source=source)
