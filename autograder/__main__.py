"""Command line of the autograder.

python -m autograder grade SUBMISSION_DIR --results RESULTS_JSON [--labels LABELS_DIR] [--assignment NAME]
python -m autograder grade-all SUBMISSIONS_DIR [--labels LABELS_DIR] --csv grades.csv --jobs N
"""

import argparse
import sys

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
    _common(a)
    m = sub.add_parser("merge-csv", help="merge the per-task CSVs of a Slurm grading array")
    m.add_argument("out_csv")
    m.add_argument("parts", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "merge-csv":
        from .grade_all import merge_csv

        return merge_csv(args.out_csv, args.parts)
    try:
        if args.command == "grade":
            results = grade(args.submission, args.results, args.labels, _options(args))
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
        )
    except (OSError, ValueError, SandboxUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
