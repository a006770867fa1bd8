"""Grade a folder of submissions in parallel: one results.json each and one CSV.

Each sub-folder of SUBMISSIONS_DIR is one submission (its name is the row key). Up to
``jobs`` submissions are graded at once, each by its own sandbox running as its own
unprivileged user (uid ``NOBODY - slot``), so parallel sandboxes cannot signal each other or
share process limits.
"""

import csv
import os
import queue
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from . import sandbox
from .grade import REQUIRED_FILE_TAG, grade
from .results import write_results


def _slots(jobs, base_uid):
    q = queue.Queue()
    for i in range(jobs):
        q.put(base_uid - i)
    return q


def _cell(test):
    """A test's CSV cell: its score, or present / missing for a required file (0 points)."""
    if REQUIRED_FILE_TAG in test.get("tags", ()) and not test["max_score"]:
        return "present" if test.get("status") == "passed" else "missing"
    return f"{test['score']:g}"


def grade_all(submissions, labels_dir, csv_path, jobs=1, results_dir=None, only=None, options=None):
    """Grade every sub-folder of ``submissions``; return a process exit status (0 ok)."""
    from tqdm import tqdm

    submissions = Path(submissions)
    folders = sorted(
        p
        for p in submissions.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )
    if only:
        folders = [p for p in folders if p.name in set(only)]
    if not folders:
        raise ValueError(f"{submissions}: no submission folders found")
    jobs = max(1, min(jobs, len(folders)))
    # a machine that cannot sandbox student code fails once, in one line, not per submission
    sandbox.require_sandbox(options.namespaces, options.userns, options.insecure)
    # every other student's upload and results stay out of each sandbox's reach
    shared = (str(submissions), *([str(results_dir)] if results_dir else []))
    options = replace(options, shared=shared)
    uids = _slots(jobs, options.uid)
    rows = {}

    def one(folder):
        uid = uids.get()
        try:
            target = (Path(results_dir) / folder.name if results_dir else folder) / "results.json"
            try:
                res = grade(folder, target, labels_dir, replace(options, uid=uid, quiet=True))
            except Exception as exc:  # never lose the whole batch to one submission
                res = {"tests": [], "output": f"grader error: {exc}"}
                write_results(target, res)
            return folder.name, res
        finally:
            uids.put(uid)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, f) for f in folders]
        for fut in tqdm(
            as_completed(futures), total=len(futures), desc="grading", unit="sub", file=sys.stderr
        ):
            name, res = fut.result()
            rows[name] = res
    test_names = []
    for res in rows.values():
        for t in res["tests"]:
            if t["name"] not in test_names:
                test_names.append(t["name"])
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["submission", "score", "max_score", *test_names])
        for name in sorted(rows):
            res = rows[name]
            by_name = {t["name"]: _cell(t) for t in res["tests"]}
            writer.writerow(
                [
                    name,
                    f"{sum(t['score'] for t in res['tests']):g}",
                    f"{sum(t['max_score'] for t in res['tests']):g}",
                    *[by_name.get(n, "") for n in test_names],
                ]
            )
    os.replace(tmp, csv_path)
    print(f"graded {len(rows)} submissions into {csv_path}", file=sys.stderr)
    failed = sorted(name for name, res in rows.items() if not res["tests"])
    if failed:  # the grader itself failed on these (e.g. bad labels): say so, exit non-zero
        print(
            f"error: {len(failed)} submissions could not be graded ({', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); see the output in their results.json",
            file=sys.stderr,
        )
        return 1
    return 0


def merge_csv(out_csv, parts):
    """Merge per-task CSVs (same or different columns) into one, sorted by submission."""
    header, rows = ["submission", "score", "max_score"], {}
    for part in parts:
        with open(part, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                for key in row:
                    if key not in header:
                        header.append(key)
                rows[row["submission"]] = row
    tmp = Path(str(out_csv) + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, restval="")
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow(rows[name])
    os.replace(tmp, out_csv)
    print(f"merged {len(rows)} submissions into {out_csv}", file=sys.stderr)
    return 0
