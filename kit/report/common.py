"""What every figure and table of report.py shares: output paths, saving, pyplot.

Figures are PNG at 150 dpi, or vector graphics when ``--out`` ends in ``.pdf`` or ``.svg``;
every output file is written atomically, and a bad ``--out`` is a one-line error before any
slow work.
"""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import UserError

DPI = 150  # PNG resolution: sharp when printed at the figure's size
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_out(out: str, suffixes: tuple[str, ...] | None) -> Path:
    path = Path(out)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"--out {out}: give a file name ending in {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise UserError(f"--out {out}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    return path


def save_figure(fig, out: str) -> Path:
    """Save a matplotlib figure atomically: PNG at ``DPI``, or vector PDF/SVG."""
    import matplotlib.pyplot as plt

    path = check_out(out, FIGURE_SUFFIXES)
    fmt = path.suffix.lower()[1:]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=fmt, dpi=DPI)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {path}")
    return path


def wrap_title(fig, text: str, fontsize: float) -> str:
    """``text`` broken into lines that fit the figure's width (titles must not be cut off)."""
    import textwrap

    chars = int(fig.get_figwidth() * 72 / (0.55 * fontsize))  # ~0.55 em per character
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def pyplot():
    """pyplot on the Agg backend: files only, no window (works over ssh and on Slurm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_text(names, label: int) -> str:
    """A label as the figures show it: its class name when known, "hidden" for -1."""
    if label < 0:
        return "hidden"
    return names[label] if names and label < len(names) else str(label)


def show_image(ax, image):
    """(C, H, W) uint8 tensor on an axis (greyscale when C == 1)."""
    array = image.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(array)
