"""Cases and known mistakes of 1.13 CaptioningTransformer (forward and greedy sample)."""

import torch

import transformer_utils as tu  # the reference solution

from .random_inputs import _gen, _randn, _random_state

SPECIALS = ["<NULL>", "<START>", "<END>", "<UNK>"]
WORDS = ["a", "cat", "dog", "on", "the", "mat", "sofa", "and", "red", "big", "small", "grass"]


def _vocabulary(size):
    """word -> id for ``size`` words: the four special tokens first, as in CS231n's files."""
    return {w: i for i, w in enumerate((SPECIALS + WORDS)[:size])}


def _forward(model, features, captions, kind=""):
    """The reference forward, or one typical wrong version of it."""
    T = captions.shape[1]
    words = model.embedding(captions)  # (N, T, W)
    if kind not in ("no_pos", "pos_on_memory"):
        words = model.positional_encoding(words)
    memory = model.visual_projection(features)
    if memory.dim() == 2:
        memory = memory[:, None, :]
    if kind == "pos_on_memory":
        memory = model.positional_encoding(memory)
    mask = {
        "no_mask": None,
        "future_mask": tu.causal_mask(T).T,  # word t sees words t..T-1
    }.get(kind, tu.causal_mask(T))
    for layer in model.layers:
        words = layer(words, words if kind == "no_image" else memory, self_attn_mask=mask)
    if kind == "no_output":
        return model.norm(words)  # (N, T, W): only comparable where W == V
    scores = model.output(words if kind == "no_norm" else model.norm(words))
    return scores.softmax(-1) if kind == "softmax" else scores


def _sample(model, features, length, kind="", forward_kind=""):
    """The reference greedy decoding, or one typical wrong version of it."""
    N = features.shape[0]
    out = torch.full((N, length), model._null, dtype=torch.long)
    partial = torch.full((N, 1), model._start, dtype=torch.long)
    if kind == "parallel":  # one pass before the loop, over <START> and <NULL>s
        once = _forward(model, features, torch.cat([partial, out[:, : length - 1]], 1))
    done = torch.zeros(N, dtype=torch.bool)
    for t in range(length):
        if kind == "parallel":
            word = once[:, t].argmax(-1)
        else:
            word = _forward(model, features, partial, forward_kind)[:, -1].argmax(-1)
        if kind != "no_null_after_end":
            word = word.masked_fill(done, model._null)
        out[:, t] = word
        done = done | (word == model._end)
        if kind != "no_feedback":
            partial = torch.cat([partial, word[:, None]], dim=1)
    if kind == "with_start":  # <START> returned as the first word, the last word dropped
        out = torch.cat([torch.full((N, 1), model._start), out[:, :-1]], dim=1)
    return out


def _min_margin(model, features, length):
    """The smallest gap between the best and second-best word over the greedy steps: the
    sampled words must not hang on rounding (a correct answer computes in another order)."""
    partial = torch.full((features.shape[0], 1), model._start, dtype=torch.long)
    gaps = []
    for _ in range(length):
        top = model(features, partial)[:, -1].topk(2, dim=-1).values  # (N, 2)
        gaps.append((top[:, 0] - top[:, 1]).min().item())
        partial = torch.cat([partial, model(features, partial)[:, -1].argmax(-1)[:, None]], 1)
    return min(gaps)


def _shows_every_sample_mistake(model, features, length):
    """Whether the greedy captions of this model make every sampling mistake visible: some
    caption ends with room left (so <NULL>s follow), some has two different words before its
    end, and feeding the words back changes what comes next."""
    sample = _sample(model, features, length)
    end = model._end
    ends_early = bool((sample[:, : length - 2] == end).any())
    varied = any(
        len({w for w in row.tolist() if w not in (end, model._null)}) >= 2 for row in sample
    )
    differs = all(
        not torch.equal(sample, _sample(model, features, length, kind))
        for kind in ("no_feedback", "parallel")
    )
    return ends_early and varied and differs


# Public cases: one feature vector per image (CS231n's fc7/PCA features), then region
# features (N, S, D). wordvec_dim == vocabulary size, so that returning the hidden states
# instead of the scores keeps the shape and can be named (with another size, sampling from
# the hidden states crashes on a word id past the vocabulary, which is reported as such).
# (N, S or None, D, W, H, L, V, T, sampled length)
PUBLIC = [(3, None, 10, 16, 2, 2, 16, 6, 7), (2, 4, 12, 12, 3, 1, 12, 5, 6)]
HIDDEN = [(2, None, 8, 14, 2, 1, 14, 5, 8), (3, 3, 6, 10, 2, 2, 10, 6, 5)]

FORWARD_MISTAKES = {
    "no_mask": "the causal mask is not passed to the decoder layers: word t must see words "
    "0..t only (self_attn_mask=causal_mask(T))",
    "future_mask": "the causal mask is transposed: word t sees the words after it; True must "
    "be on and below the diagonal (causal_mask(T))",
    "no_pos": "the positional encoding is missing: add self.positional_encoding to the word "
    "vectors",
    "pos_on_memory": "the words' positional encoding is added to the image features: it "
    "belongs to the word vectors (the memory is not a sentence; an image encoder gives its "
    "regions their own positions)",
    "no_image": "the image is not used as the decoder's memory: cross-attention must read "
    "self.visual_projection(features), not the words",
    "no_norm": "the final LayerNorm self.norm is skipped before self.output",
    "no_output": "the scores are the decoder's hidden states: apply self.output (W -> V) after "
    "self.norm",
    "softmax": "the scores are softmax probabilities: return the raw scores (logits); the loss "
    "applies the softmax",
}
SAMPLE_MISTAKES = {
    "no_feedback": "sample does not feed its own words back: append each step's argmax to the "
    "partial caption and read the scores of its LAST position",
    "parallel": "sample predicts every position in one pass over <START> and <NULL>s: generate "
    "one word per step and feed it back",
    "with_start": "the sampled captions begin with <START>: return the generated words only "
    "(captions[:, 0] is the first generated word)",
    "no_null_after_end": "words are still written after <END>: once a caption has produced "
    "<END>, every later position is <NULL>",
}


def make_captioning(seed, hidden):
    cases, mistakes = [], []
    for i, (N, S, D, W, H, L, V, T, length) in enumerate(HIDDEN if hidden else PUBLIC):
        word_to_idx = _vocabulary(V)
        config = {"input_dim": D, "wordvec_dim": W, "num_heads": H, "num_layers": L,
                  "max_length": 30, "mlp_ratio": 2.0}  # fmt: skip
        # Random weights give dull captions (one word repeated, or <NULL>s) more often than
        # not: draw again (deterministically) until every sampling mistake shows.
        for attempt in range(200):
            gen = _gen(seed + i + 7919 * attempt)
            torch.manual_seed(seed + i)
            model = tu.CaptioningTransformer(word_to_idx, **config).eval()
            state = _random_state(model, gen, scale=1.5)
            state["embedding.weight"] = _randn(gen, V, W)  # word vectors as large as positions
            # as after training: <NULL> and <START> are never the next word
            state["output.bias"][[word_to_idx["<NULL>"], word_to_idx["<START>"]]] = -4.0
            model.load_state_dict(state)
            features = _randn(gen, *((N, D) if S is None else (N, S, D)), scale=2.0)
            with torch.no_grad():
                if _shows_every_sample_mistake(model, features, length):
                    break
        else:
            raise RuntimeError(f"captioning case {i}: no draw shows every sampling mistake")
        # captions: <START>, words, <END>, then <NULL> padding in some of them
        captions = torch.randint(4, V, (N, T), generator=gen)
        captions[:, 0] = word_to_idx["<START>"]
        for row in range(N):
            end = T - 1 - row
            captions[row, end] = word_to_idx["<END>"]
            captions[row, end + 1 :] = word_to_idx["<NULL>"]
        with torch.no_grad():
            margin = _min_margin(model, features, length)
            if margin < 1e-3:
                raise RuntimeError(f"captioning case {i}: greedy margin {margin:.1e} too small")
            target = {"scores": model(features, captions), "sample": model.sample(features, length)}
            wrong = {}
            # Sampling mistakes first: a wrong forward also changes the sampled words, which
            # may equal those of a sampling mistake, and the first mistake that fits is named.
            for kind, description in SAMPLE_MISTAKES.items():
                wrong[description] = {
                    "scores": target["scores"],
                    "sample": _sample(model, features, length, kind),
                }
            for kind, description in FORWARD_MISTAKES.items():
                wrong[description] = {
                    "scores": _forward(model, features, captions, kind),
                    "sample": _sample(model, features, length, forward_kind=kind),
                }
        case_input = {
            "word_to_idx": word_to_idx,
            "config": config,
            "state_dict": state,
            "features": features,
            "captions": captions,
            "max_length": length,
        }
        cases.append({"input": case_input, "target": target})
        mistakes.append(wrong)
    return cases, mistakes
