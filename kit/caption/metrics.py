"""How good generated captions are: token accuracy and corpus BLEU-4.

- ``token_accuracy(sampled, truth)``: the generated words compared with the true caption
  position by position. For a true caption ``<START> w_1 ... w_L`` whose ``w_L`` is its
  ``<END>``, the generated word t (``sampled[:, t - 1]``, no <START>) counts as right when it
  equals ``w_t``, for t = 1..L (its <END> included, nothing after it). The accuracy is the
  number of right words over the number of true words, summed over all captions (a corpus
  figure, not a mean of per-caption figures). A word left out or added shifts the rest of
  the caption, which then counts as wrong: it measures the exact caption.
- ``corpus_bleu(hypotheses, references)``: BLEU-4 of Papineni et al. (2002) over the whole
  corpus: n-gram precisions for n = 1..4 with each n-gram's count clipped to the most it
  occurs in one reference of its caption, summed over the corpus, combined by a geometric
  mean, times the brevity penalty exp(1 - r / c) when the total hypothesis length c is at
  most the total length r of the references closest in length (0 when a precision is 0).
  Words exclude <START>, <END> and <NULL>.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch


def token_accuracy(sampled: torch.Tensor, truth: torch.Tensor, null: int, end: int) -> float:
    """Position-by-position accuracy of greedy captions, up to each true <END> inclusive.

    sampled: (N, L) generated ids without <START>; truth: (N, T) true captions WITH their
    <START> (CS231n's format) and <NULL> padding. A generated caption shorter than L words
    is padded with <NULL> (never right)."""
    words = truth[:, 1:]  # (N, T - 1) what should be generated
    L = words.shape[1]
    if sampled.shape[1] < L:
        pad = sampled.new_full((sampled.shape[0], L - sampled.shape[1]), null)
        sampled = torch.cat([sampled, pad], dim=1)
    sampled = sampled[:, :L]
    # true positions: up to and including the first <END>
    after_end = (words == end).long().cumsum(1) - (words == end).long()  # >0 after the <END>
    counted = (after_end == 0) & (words != null)
    right = (sampled == words) & counted
    total = int(counted.sum())
    return int(right.sum()) / total if total else 0.0


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(
    hypotheses: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    max_n: int = 4,
) -> float:
    """Corpus BLEU-``max_n`` (uniform weights): ``hypotheses[i]`` is one generated caption (a
    list of words), ``references[i]`` the true captions of the same image (lists of words)."""
    if len(hypotheses) != len(references):
        raise ValueError("one list of references per hypothesis")
    matched, possible = [0] * max_n, [0] * max_n
    hyp_length = ref_length = 0
    for hyp, refs in zip(hypotheses, references):
        if not refs:
            raise ValueError("every hypothesis needs at least one reference")
        hyp_length += len(hyp)
        # the reference length closest to the hypothesis' (the shorter one on a tie)
        ref_length += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            most = Counter()
            for ref in refs:
                for gram, c in _ngrams(ref, n).items():
                    most[gram] = max(most[gram], c)
            matched[n - 1] += sum(min(c, most[gram]) for gram, c in counts.items())
            possible[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matched) == 0 or hyp_length == 0:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matched, possible)) / max_n
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity * math.exp(log_precision)
