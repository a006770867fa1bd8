"""Instructor commands.

python -m instructor release OUT_DIR [--force]          the student starter
python -m instructor gradescope OUT_ZIP --labels DIR    the Gradescope autograder zip
python -m instructor.reference_data                     regenerate test_data and hidden data
"""

import argparse
import sys

from autograder.assignment import AssignmentError
from autograder.declarations import DeclarationError

from .release import ReleaseError


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m instructor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="write the student starter into OUT_DIR")
    r.add_argument("out_dir")
    r.add_argument("--assignment", help="assignment YAML (default instructor/assignment.yml)")
    r.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    g = sub.add_parser("gradescope", help="build the Gradescope autograder zip")
    g.add_argument("out_zip")
    g.add_argument(
        "--labels", required=True, help="folder with the true test_flower.txt / test_pixmo.txt"
    )
    g.add_argument("--assignment", help="assignment YAML (default instructor/assignment.yml)")
    args = parser.parse_args(argv)
    try:
        if args.command == "release":
            from .release import build_release

            files = build_release(args.out_dir, assignment_path=args.assignment, force=args.force)
            print(f"wrote {len(files)} files to {args.out_dir}")
        else:
            from .gradescope import build_zip

            names = build_zip(args.out_zip, args.labels, assignment_path=args.assignment)
            print(f"wrote {args.out_zip} ({len(names)} entries); upload it as the autograder")
    except (ReleaseError, AssignmentError, DeclarationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
