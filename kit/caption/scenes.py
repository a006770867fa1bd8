"""Captioned scenes of REAL Fashion-MNIST images: Question 5's data when COCO is not here.

A scene is 56x56 grey: a 2x2 grid of 28x28 cells, 1 to 4 of which hold a Fashion-MNIST item
(the others stay black). Its caption names the items in reading order (left to right, then
top to bottom), e.g. ``<START> a shirt , a bag , a sneaker and a coat <END>``; one item:
``a shirt``, two: ``a shirt and a bag``. Every class is one word (``CLASS_WORDS``), so a
caption of k items has 3k words counting its <END> (at most 12) and captions of the same
items line up word for word.

Scenes are planned (``plan_scenes``: which item goes into which cell) and drawn
(``compose``) on the fly, on the training device: the test scenes only from the
Fashion-MNIST TEST images, each used once; the validation scenes only from a fixed, seeded
part of the training images, each used once; training scenes from the other training
images, planned anew every epoch (seed, epoch). Everything is seeded and deterministic.
"""

from __future__ import annotations

import torch

CLASS_WORDS = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
]  # fmt: skip  (Fashion-MNIST's classes 0-9, one word each: "ankle boot" is "boot")
VOCABULARY = ["<NULL>", "<START>", "<END>", "<UNK>", "a", ",", "and", *CLASS_WORDS]
WORD_TO_IDX = {w: i for i, w in enumerate(VOCABULARY)}
NULL, START, END = WORD_TO_IDX["<NULL>"], WORD_TO_IDX["<START>"], WORD_TO_IDX["<END>"]
A, COMMA, AND = WORD_TO_IDX["a"], WORD_TO_IDX[","], WORD_TO_IDX["and"]
FIRST_CLASS = WORD_TO_IDX[CLASS_WORDS[0]]

GRID = 2  # cells per side
CELL = 28  # pixels per cell (a Fashion-MNIST image)
SIDE = GRID * CELL  # 56
CELLS = GRID * GRID
CAPTION_LENGTH = 3 * CELLS + 1  # <START>, then "a <class>" and a separator or <END> per item


def plan_scenes(
    num_items: int,
    num_scenes: int | None,
    generator: torch.Generator,
    min_items: int = 1,
    max_items: int = CELLS,
) -> torch.Tensor:
    """Which item goes into which cell: (S, 4) int64, the item index of each cell in reading
    order, -1 where the cell is empty.

    Every scene holds between ``min_items`` and ``max_items`` items (uniform) in cells drawn
    at random. ``num_scenes`` None: the items are a shuffled deck dealt out once, each item
    in exactly one scene (the last scene may hold fewer). Otherwise ``num_scenes`` scenes,
    dealt from the deck reshuffled as often as needed (each item about equally often).
    """
    if not 1 <= min_items <= max_items <= CELLS:
        raise ValueError(f"need 1 <= min_items <= max_items <= {CELLS}")
    if num_scenes is None:
        estimate = 2 * num_items // max(1, min_items) + 1  # more sizes than ever needed
        sizes = torch.randint(min_items, max_items + 1, (estimate,), generator=generator)
        ends = sizes.cumsum(0)
        count = int((ends < num_items).sum()) + 1  # the scene that reaches the last item
        sizes = sizes[:count]
        sizes[-1] -= int(ends[count - 1]) - num_items
        deck = torch.randperm(num_items, generator=generator)
    else:
        sizes = torch.randint(min_items, max_items + 1, (num_scenes,), generator=generator)
        decks = -(-int(sizes.sum()) // num_items)
        deck = torch.cat([torch.randperm(num_items, generator=generator) for _ in range(decks)])
    S = len(sizes)
    # Cells: a random order per scene; the first `size` of it are occupied, kept sorted.
    order = torch.rand(S, CELLS, generator=generator).argsort(dim=1)  # (S, 4)
    occupied = torch.zeros(S, CELLS, dtype=torch.bool)
    occupied.scatter_(1, order, torch.arange(CELLS).expand(S, CELLS) < sizes[:, None])
    plan = torch.full((S, CELLS), -1, dtype=torch.long)
    plan[occupied] = deck[: int(sizes.sum())]  # row-major: items in reading order
    return plan


def captions_of(plan: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The token ids (S, CAPTION_LENGTH) of the scenes of ``plan`` (S, 4), with ``labels``
    (N,) the class of every item: <START> a <class> , a <class> and a <class> <END> <NULL>..."""
    S = plan.shape[0]
    occupied = plan >= 0  # (S, 4)
    k = occupied.sum(1)  # (S,) items per scene
    # the items' classes in reading order, moved to the front (empty cells last)
    front = (~occupied).to(torch.int8).argsort(dim=1, stable=True)  # (S, 4)
    classes = labels.to(plan.device)[plan.clamp_min(0)].gather(1, front)  # (S, 4)
    tokens = torch.full((S, CAPTION_LENGTH), NULL, dtype=torch.long, device=plan.device)
    tokens[:, 0] = START
    for j in range(CELLS):
        present = j < k  # (S,)
        sep = torch.where(j == k - 1, END, torch.where(j == k - 2, AND, COMMA))  # (S,)
        tokens[:, 1 + 3 * j] = torch.where(present, A, NULL)
        tokens[:, 2 + 3 * j] = torch.where(present, FIRST_CLASS + classes[:, j], NULL)
        tokens[:, 3 + 3 * j] = torch.where(present, sep, NULL)
    return tokens


def compose(images: torch.Tensor, plan: torch.Tensor, flips: torch.Tensor | None = None):
    """Draw the scenes of ``plan`` (S, 4) from ``images`` (N, 1, 28, 28) uint8 (on any device;
    the plan is moved there): (S, 1, 56, 56) uint8, empty cells black. ``flips`` (S, 4) bool
    mirrors those items left-right (training augmentation)."""
    blank = torch.zeros_like(images[:1])
    pool = torch.cat([images, blank])  # index N = the empty cell
    index = plan.to(images.device)
    index = torch.where(index >= 0, index, images.shape[0])
    cells = pool[index.reshape(-1)].reshape(-1, CELLS, CELL, CELL)  # (S, 4, 28, 28)
    if flips is not None:
        cells = torch.where(flips.to(images.device)[..., None, None], cells.flip(-1), cells)
    grid = cells.reshape(-1, GRID, GRID, CELL, CELL).permute(0, 1, 3, 2, 4)  # (S, r, y, c, x)
    return grid.reshape(-1, 1, SIDE, SIDE).contiguous()


def caption_text(tokens) -> str:
    """A caption's words (ids, with or without <START>) up to its <END>, as text."""
    words = []
    for t in tokens.tolist() if hasattr(tokens, "tolist") else tokens:
        if t == END:
            break
        if t not in (NULL, START):
            words.append(VOCABULARY[t])
    return " ".join(words)
