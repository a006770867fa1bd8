"""Command line of the autograder.

python -m autograder grade SUBMISSION_DIR --results RESULTS_JSON [--labels LABELS_DIR] [--assignment NAME]
python -m autograder grade-all SUBMISSIONS_DIR [--labels LABELS_DIR] --csv grades.csv --jobs N
python -m autograder similarity UPLOADS_DIR [--labels LABELS_DIR] [--out DIR]
"""

import argparse
import sys

from .budget import read_metadata
from .grade import GradeOptions, grade
from .sandbox import SandboxUnavailable


def _common(p):
    p.add_argument(
        "--labels",
        help="folder with the true labels of the graded prediction files (e.g. test_flower.txt); "
        "needed when the assignment grades any",
    )
    p.add_argument(
        "--assignment",
        help="a course of instructor/assignments/ (e.g. cs771_hw2) or an assignment file; default: the packaged one, else cs444_mp3",
    )
    p.add_argument("--timeout", type=float, help="per-exercise wall-clock limit in seconds")
    p.add_argument(
        "--full-output",
        action="store_true",
        help="show every line of each test's output (the summary shows the first 6)",
    )
    p.add_argument(
        "--no-namespaces",
        action="store_true",
        help="do not use Linux namespaces (test the privilege-drop fallback)",
    )
    p.add_argument(
        "--userns",
        action="store_true",
        help="use the user-namespace sandbox (what runs without root) even as root",
    )
    p.add_argument(
        "--release-private",
        action="store_true",
        help="show the private parts' scores (after the deadline); without it they are "
        "scored but hidden, as on Gradescope until grades are published",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="run student code even if the sandbox cannot hide the protected paths "
        "(local experiments only; never for real grading)",
    )


def _options(args, **extra):
    return GradeOptions(
        assignment=args.assignment,
        timeout_s=args.timeout,
        insecure=args.insecure,
        namespaces=not args.no_namespaces,
        userns=args.userns,
        full_output=args.full_output,
        release_private=args.release_private,
        **extra,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m autograder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade one submission folder, exactly as on Gradescope")
    g.add_argument("submission")
    g.add_argument("--results", required=True, help="where to write results.json")
    g.add_argument(
        "--metadata",
        help="Gradescope's submission_metadata.json: counts the upload against the "
        "assignment's submission_budget and compares with the previous grading",
    )
    _common(g)
    a = sub.add_parser("grade-all", help="grade every sub-folder of SUBMISSIONS_DIR in parallel")
    a.add_argument("submissions")
    a.add_argument("--csv", required=True, help="where to write one row per submission")
    a.add_argument("--jobs", type=int, default=1, help="submissions graded at once")
    a.add_argument(
        "--results-dir",
        help="where to put <name>/results.json (default: <submission>/results.json beside each)",
    )
    a.add_argument("--only", nargs="*", help="grade only these sub-folder names")
    a.add_argument(
        "--metadata-dir",
        help="folder with each submission's Gradescope metadata (<name>/submission_metadata.json "
        "or <name>.json): the CSV records its attempts",
    )
    _common(a)
    s = sub.add_parser(
        "similarity",
        help="compare every pair of uploads (shared mistakes, code fingerprints): a ranked "
        "CSV and an HTML page of the top pairs",
    )
    s.add_argument("uploads", help="folder with one sub-folder per upload (as for grade-all)")
    s.add_argument("--out", default="similarity-report", help="where to write similarity.csv "
                   "and similarity.html (default: ./similarity-report)")  # fmt: skip
    s.add_argument("--labels", help="true labels of the prediction files (needed to compare them)")
    s.add_argument("--assignment", help="as for grade (which files to compare)")
    s.add_argument(
        "--starter",
        help="the student release folder (python -m instructor release DIR): its code is left "
        "out; default: built now from this repository",
    )
    s.add_argument("--files", nargs="*", help="compare only these files")
    s.add_argument("--jobs", type=int, help="processes for fingerprinting (default: 2)")
    s.add_argument("--top", type=int, default=20, help="pairs per file shown side by side")
    s.add_argument("--csv-rows", type=int, default=1000, help="pairs per file in the CSV (0: all)")
    m = sub.add_parser("merge-csv", help="merge the per-task CSVs of a Slurm grading array")
    m.add_argument("out_csv")
    m.add_argument("parts", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "similarity":
        from .assignment import AssignmentError
        from .similarity import main as similarity

        try:
            return similarity(args)
        except (OSError, ValueError, AssignmentError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "merge-csv":
        from .grade_all import merge_csv

        return merge_csv(args.out_csv, args.parts)
    try:
        if args.command == "grade":
            if args.metadata:
                read_metadata(args.metadata)  # a bad file is one line here, not a 0
            options = _options(args, metadata=args.metadata)
            results = grade(args.submission, args.results, args.labels, options)
            # No test at all: the grader itself failed (bad labels, missing folder, ...); its
            # message is in the summary above, and results.json says the same to the student.
            return 0 if results["tests"] else 1
        from .grade_all import grade_all

        return grade_all(
            args.submissions,
            args.labels,
            args.csv,
            jobs=args.jobs,
            results_dir=args.results_dir,
            only=args.only,
            options=_options(args, quiet=True),
            metadata_dir=args.metadata_dir,
        )
    except (OSError, ValueError, SandboxUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
