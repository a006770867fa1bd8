"""Instructor commands.

python -m instructor release [--assignment NAME] OUT_DIR [--force]   a course's student starter
python -m instructor gradescope [--assignment NAME] OUT_ZIP [--labels DIR]   its Gradescope zip
python -m instructor readme                     README.md's generated blocks and course.yml, for the default course
python -m instructor.reference_data                     regenerate test_data and hidden data

NAME is a course of instructor/assignments/ (cs444_mp3, the default; cs771_hw2, iiit_a5,
uva_vit, xcs231n_a3) or the path of an assignment file.
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
    r.add_argument(
        "--assignment", help="a course of instructor/assignments/ or a path (default cs444_mp3)"
    )
    r.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    g = sub.add_parser("gradescope", help="build the Gradescope autograder zip")
    g.add_argument("out_zip")
    g.add_argument("--labels", help="folder with the true labels of the graded prediction files")
    g.add_argument(
        "--assignment", help="a course of instructor/assignments/ or a path (default cs444_mp3)"
    )
    sub.add_parser("readme", help="rewrite README.md's generated blocks (default course)")
    args = parser.parse_args(argv)
    try:
        if args.command == "readme":
            from .release import update_readme

            print("README.md and course.yml updated" if update_readme() else "up to date")
        elif args.command == "release":
            from autograder.assignment import load_assignment

            from .release import build_release, placeholder_warnings

            files = build_release(args.out_dir, assignment_path=args.assignment, force=args.force)
            print(f"wrote {len(files)} files to {args.out_dir}")
            for line in placeholder_warnings(load_assignment(args.assignment)):
                print(line, file=sys.stderr)
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
