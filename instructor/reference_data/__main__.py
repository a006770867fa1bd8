"""Regenerate the reference data of the exercise bank from the reference solution.

    python -m instructor.reference_data            # writes the public and the hidden set
    python -m instructor.reference_data --split public --out_dir /tmp/x

Without --out_dir the public set goes to test_data/ and the hidden one to
autograder/reference_data/. Prints every written file and the spread table.
"""

import argparse
import os

from .generation import OUT_DIRS, ROOT, generate
from .tolerances import spread_table


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m instructor.reference_data",  # how it is run, in its usage and errors
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--split", choices=["public", "hidden", "both"], default="both")
    parser.add_argument(
        "--out_dir", default=None, help="default: test_data/ or autograder/reference_data/"
    )
    args = parser.parse_args(argv)
    splits = ["public", "hidden"] if args.split == "both" else [args.split]
    if args.out_dir is not None and len(splits) > 1:
        parser.error("--out_dir needs --split public or --split hidden")
    for split in splits:
        for path in generate(args.out_dir, split):
            print(f"{os.path.getsize(path):>8} bytes  {os.path.relpath(path, ROOT)}")
        print(spread_table(args.out_dir or OUT_DIRS[split]))


if __name__ == "__main__":
    main()
