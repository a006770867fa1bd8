"""Copies found by their mistakes: how many test images two uploads got wrong with the same
wrong class, against what two independent models of the same accuracies would share.

Two honest models are right together on easy images and, more often than chance, wrong
together on hard ones, and a hard image usually fools models into the same few classes. So
the yardstick is the class itself (every upload of the same prediction file):

* whether upload ``u`` is right on image ``i``: ``P[u, i] = sigmoid(b_i + d_u)``, with the
  image's difficulty ``b_i`` from how many uploads got it right and the upload's ability
  ``d_u`` set so that its expected number right is its actual number right (a Rasch model:
  the null keeps each upload's accuracy);
* which wrong class it picks when wrong: the wrong answers the rest of the class gave on
  that image, without ``u`` and ``v`` themselves (a copy must not explain itself), smoothed by
  one pseudo-upload answering like the class does on images of the same true class.

Under independence the expected number of shared same-class mistakes is

    E[u, v] = sum_i (1 - P[u, i]) (1 - P[v, i]) sum_k r_uv(i, k)^2,

where ``r_uv(i, k)`` is that leave-pair-out wrong-class distribution. Expanded, every term is a
matrix product over uploads (see :func:`expected_shared`), so all pairs of 500 uploads take
seconds. The shared count is a sum of many rare, independent events, so under the null it is
close to ``Poisson(E)``; the p-value is its upper tail. Models of one family trained on one
data set share more than independent ones: their p-values are small too. Rank by it, read
the top pairs side by side, and ask.
"""

import math

import numpy as np

from .overlap import shared

MIN_UPLOADS = 3  # the null needs the rest of the class: at least one other upload
PSEUDO = 1.0  # pseudo-uploads of the prior in each image's wrong-class distribution
TAIL_SIGMAS = 12.0  # the Poisson sums run this many standard deviations past their start
CHUNK = 8192  # pairs per tail computation (bounded memory)
NEWTON_STEPS = 50


def answer_matrix(predictions, total):
    """``A[u, i]``: upload ``u``'s class for image ``i``, or -1 where its file stops short."""
    A = np.full((len(predictions), total), -1, dtype=np.int64)
    for u, preds in enumerate(predictions):
        p = np.asarray(preds[:total], dtype=np.int64)
        A[u, : p.size] = p
    return A


def log10_poisson_sf(s, mu):
    """``log10 P(X >= s)`` for ``X ~ Poisson(mu)``, elementwise (arrays of equal shape)."""
    s = np.asarray(s, dtype=np.int64)
    mu = np.asarray(mu, dtype=np.float64)
    out = np.zeros(s.shape, dtype=np.float64)
    flat_s, flat_mu, flat_out = s.reshape(-1), mu.reshape(-1), out.reshape(-1)
    span = int(TAIL_SIGMAS * math.sqrt(max(float(flat_mu.max(initial=0.0)), 1.0)) + 40)
    top = int(flat_s.max(initial=0)) + span + 1
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, top + 1)))])
    offsets = np.arange(span)
    for start in range(0, flat_s.size, CHUNK):
        ss, mm = flat_s[start : start + CHUNK], flat_mu[start : start + CHUNK]
        res = np.zeros(ss.size)
        zero_mu = mm <= 0
        res[zero_mu & (ss > 0)] = -np.inf  # nothing can be shared, yet something is
        upper = (ss > mm) & ~zero_mu
        if upper.any():  # the terms fall from s on: sum s .. s + span
            j = ss[upper, None] + offsets[None, :]
            log_pmf = j * np.log(mm[upper, None]) - mm[upper, None] - log_fact[j]
            res[upper] = _logsumexp(log_pmf) / math.log(10)
        lower = (ss <= mm) & (ss > 0) & ~zero_mu
        if lower.any():  # 1 - P(X <= s - 1): the terms fall from s - 1 down
            j = ss[lower, None] - 1 - offsets[None, :]
            valid = j >= 0
            jj = np.where(valid, j, 0)
            log_pmf = np.where(
                valid, jj * np.log(mm[lower, None]) - mm[lower, None] - log_fact[jj], -np.inf
            )
            cdf = np.exp(_logsumexp(log_pmf))
            res[lower] = np.log10(np.clip(1.0 - cdf, 1e-300, 1.0))
        flat_out[start : start + CHUNK] = res
    return out


def _logsumexp(a):
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).sum(axis=1))


def right_probabilities(right):
    """``P[u, i]`` of the Rasch model fitted to the 0/1 matrix ``right`` (uploads x images):
    each row's sum equals the upload's number right."""
    n, m = right.shape
    rate = (right.sum(axis=0) + 0.5) / (n + 1)
    b = np.log(rate / (1 - rate))
    target = right.sum(axis=1)
    d = np.zeros(n)
    for _ in range(NEWTON_STEPS):
        P = 1 / (1 + np.exp(-(b[None, :] + d[:, None])))
        d += (target - P.sum(axis=1)) / np.maximum((P * (1 - P)).sum(axis=1), 1e-9)
        d = np.clip(d, -40, 40)  # all right (or all wrong): the ability runs off; stop it
    return 1 / (1 + np.exp(-(b[None, :] + d[:, None])))


def expected_shared(A, labels, num_classes, P):
    """``E[u, v]`` (module docstring) and the observed shared same-class mistakes ``S``."""
    n, m = A.shape
    answered = A >= 0
    wrong = answered & (A != labels[None, :])
    owner, image = np.nonzero(wrong)
    answer = A[owner, image]
    counts = np.zeros((m, num_classes))
    np.add.at(counts, (image, answer), 1)
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, labels, counts)
    confusion += 1
    np.fill_diagonal(confusion, 0)  # the true class is never a wrong answer
    prior = confusion / confusion.sum(axis=1, keepdims=True)
    smoothed = counts + PSEUDO * prior[labels]  # m x K: the class's wrong answers, smoothed
    Q = (smoothed**2).sum(axis=1)  # sum_k of the squares, per image
    D = counts.sum(axis=1) + PSEUDO  # the denominator, before leaving the pair out
    c = np.where(answered, 1 - P, 0.0)  # a missing answer cannot match anything
    eps = wrong.astype(np.float64)
    g = np.zeros((n, m))
    g[owner, image] = smoothed[image, answer]  # the smoothed count of u's own wrong answer
    # sum_k (smoothed - x_u - x_v)^2 = Q - 2 g_u - 2 g_v + eps_u + eps_v + 2 [same wrong];
    # the denominator (D - eps_u - eps_v)^2 takes four values: one set of products each.
    E = np.zeros((n, n))
    for a in (0, 1):
        Ma = c * (eps == a)
        for b in (0, 1):
            Mb = c * (eps == b)
            left = D - a - b
            w = np.where(left > 0, 1 / np.maximum(left, 1e-12) ** 2, 0.0)
            E += (Ma * (w * (Q + a + b))) @ Mb.T
            if a:
                E -= 2 * (Ma * g * w) @ Mb.T
            if b:
                E -= 2 * (Ma * w) @ (Mb * g).T
    # the shared same-class term, only where both are wrong alike: (D - 2)^2 below
    w11 = 1 / np.maximum(D - 2, PSEUDO) ** 2
    values = c[owner, image] * np.sqrt(w11[image])
    S, same = shared(owner, image * num_classes + answer, n, values)
    E += 2 * same
    np.fill_diagonal(E, 0.0)
    return np.maximum(E, 0.0), S


def compare_predictions(A, labels, num_classes):
    """For every pair of uploads (n x n arrays): ``S`` the shared same-class mistakes, ``E``
    their expected number under independence, ``log10p`` the Poisson upper tail of ``S``;
    and per upload its number of ``errors`` (wrong or missing answers)."""
    n, m = A.shape
    labels = np.asarray(labels, dtype=np.int64)
    if n < MIN_UPLOADS:
        raise ValueError(
            f"{n} uploads: comparing mistakes needs at least {MIN_UPLOADS} (what the rest of "
            "the class answers is the yardstick)"
        )
    right = (A == labels[None, :]).astype(np.float64)
    P = right_probabilities(right)
    E, S = expected_shared(A, labels, num_classes, P)
    log10p = log10_poisson_sf(S, E)
    np.fill_diagonal(log10p, 0.0)
    return {"S": S, "E": E, "log10p": log10p, "errors": m - right.sum(axis=1)}
