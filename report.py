"""Figures and tables for your report, drawn from the run folders the demos write.

    python report.py curves RUN [RUN ...] --out curves.png
    python report.py ablation RUN [RUN ...] --base RUN --out ablation.md [--format latex]
    python report.py attention --run RUN [--images 4] [--rollout] --out attention.png
    python report.py posemb --run RUN --out posemb.png
    python report.py preview flower|pixmo|scratch [--data_dir D] --out preview.png

A RUN is a demo's ``--output_dir``: ``config.yaml``, ``train.log``, ``tensorboard/``,
``best.pt``, ... Figures are PNG at 150 dpi, or vector graphics when
``--out`` ends in ``.pdf`` or ``.svg``. Every output file is written atomically.

- ``curves``: training and validation loss and accuracy per epoch (TensorBoard's own event
  reader), one colour per run.
- ``ablation``: one row per run with the settings that differ from ``--base`` (read from
  each ``config.yaml``), best validation accuracy and its epoch, test accuracy when the run
  knows it (marked synthetic when the data was), training time, and whether it finished.
- ``attention``: for a ViT run, the attention of the [CLS] token to every patch, per head of
  the last layer, their mean, the head mean of every layer and (``--rollout``) the attention
  rollout of your own ``transformer_utils.attention_rollout``, over test images.
- ``posemb``: cosine similarity between the learned position embeddings of all patches,
  arranged on the patch grid (the ViT paper, Fig. 7).
- ``preview``: a grid of dataset images with their class (PixMo: with the point).

Bad input (no such run, a run of the wrong kind, a run with no finished epoch yet) gives a
one-line ``error: ...`` and exit status 1. The figures themselves are drawn by
``kit/report/`` (one module per figure family), from run folders read by
``kit/finished_runs.py``.
"""

from __future__ import annotations

import argparse
import sys

from kit.errors import UserError
from kit.finished_runs import read_run, read_runs
from kit.report.ablation import write_ablation
from kit.report.attention import attention_maps, draw_attention

# BEGIN caption section
from kit.report.captions import caption_examples, draw_captions

# END caption section
from kit.report.common import FIGURE_SUFFIXES, check_out
from kit.report.curves import draw_curves
from kit.report.posemb import draw_posemb, learned_position_embeddings
from kit.report.preview import draw_preview


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that say where the help is."""

    def error(self, message):
        print(f"error: {message}; see python {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="report.py",
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fig_out = dict(required=True, help="output file: .png (150 dpi), .pdf or .svg (vector)")

    p = sub.add_parser("curves", help="training/validation loss and accuracy per epoch")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (--output_dir of a demo)")
    p.add_argument("--out", **fig_out)

    p = sub.add_parser("ablation", help="table: what each run changed and what it reached")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, one row each")
    p.add_argument("--base", required=True, help="the run the others are compared with")
    p.add_argument("--out", help="table file (default: print only)")
    p.add_argument("--format", choices=("markdown", "latex"), default="markdown")

    p = sub.add_parser("attention", help="[CLS] attention maps of a ViT run on test images")
    p.add_argument("--run", required=True, help="a flower run, or a Question 4 vit/diff_vit run")
    p.add_argument("--images", type=int, default=4, help="test images to show (default 4)")
    p.add_argument("--rollout", action="store_true", help="add transformer_utils.attention_rollout")
    p.add_argument("--data_dir", help="data folder (default: the one in the run's config.yaml)")
    p.add_argument("--out", **fig_out)

    p = sub.add_parser("posemb", help="similarity of the learned position embeddings")
    p.add_argument("--run", required=True, help="a flower run, or a Question 4 vit/diff_vit run")
    p.add_argument("--data_dir", help="flower data, to check the rebuilt model (optional)")
    p.add_argument("--out", **fig_out)

    p = sub.add_parser("preview", help="a grid of dataset images with their class")
    p.add_argument("dataset", choices=("flower", "pixmo", "scratch"))
    p.add_argument("--data_dir", help="data folder (default: the demo's, else its synthetic one)")
    p.add_argument("--dataset", dest="scratch_dataset", help="scratch only: which dataset")
    p.add_argument("--out", **fig_out)

    # BEGIN caption section
    p = sub.add_parser(
        "captions",
        help="test images with generated and true captions",
        description="For a captioning run (Question 5): test images with the caption its "
        "best model generates (greedy) and the true caption(s), with the run's test token "
        "accuracy and BLEU-4.",
    )
    p.add_argument("--run", required=True, help="a captioning run (demo_caption.py)")
    p.add_argument("--images", type=int, default=8, help="test images to show (default 8)")
    p.add_argument("--data_dir", help="data folder (default: the one in the run's config.yaml)")
    p.add_argument("--out", **fig_out)
    # END caption section
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "curves":
            check_out(args.out, FIGURE_SUFFIXES)  # before any slow work
            draw_curves(read_runs(args.runs), args.out)
        elif args.command == "ablation":
            runs = read_runs(args.runs)
            base = read_run(args.base)
            base = next((r for r in runs if r.path.resolve() == base.path.resolve()), base)
            write_ablation(runs, base, args.out, args.format)
        elif args.command == "attention":
            check_out(args.out, FIGURE_SUFFIXES)
            maps = attention_maps(args.run, args.images, args.data_dir, args.rollout)
            print(f"{maps['run'].name}: {maps['note']}")
            draw_attention(maps, args.out)
        elif args.command == "posemb":
            check_out(args.out, FIGURE_SUFFIXES)
            draw_posemb(learned_position_embeddings(args.run, args.data_dir), args.out)
        elif args.command == "preview":
            check_out(args.out, FIGURE_SUFFIXES)
            draw_preview(args.dataset, args.out, args.data_dir, args.scratch_dataset)
        # BEGIN caption section
        elif args.command == "captions":
            check_out(args.out, FIGURE_SUFFIXES)
            draw_captions(caption_examples(args.run, args.images, args.data_dir), args.out)
        # END caption section
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
