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
from .budget import read_metadata
from .grade import REQUIRED_FILE_TAG, grade
from .results import write_results


def _slots(jobs, base_uid):
    q = queue.Queue()
    for i in range(jobs):
        q.put(base_uid - i)
    return q


def _cell(test, released=True):
    """A test's CSV cell: its score, present / missing for a required file (0 points), or
    hidden for a private part not yet released."""
    if not released and test.get("visibility", "visible") != "visible":
        return "hidden"
    if REQUIRED_FILE_TAG in test.get("tags", ()) and not test["max_score"]:
        return "present" if test.get("status") == "passed" else "missing"
    return f"{test['score']:g}"


def metadata_path(metadata_dir, name):
    """The submission_metadata.json of submission ``name`` under ``metadata_dir`` (kept
    apart from the uploads: a file inside an upload is the student's, not Gradescope's)."""
    if metadata_dir is None:
        return None
    for path in (
        Path(metadata_dir) / name / "submission_metadata.json",
        Path(metadata_dir) / f"{name}.json",
    ):
        if path.is_file():
            return str(path)
    return None


def grade_all(
    submissions,
    labels_dir,
    csv_path,
    jobs=1,
    results_dir=None,
    only=None,
    options=None,
    metadata_dir=None,
):
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
    for folder in folders:  # a malformed metadata file stops the batch in one line, up front
        meta = metadata_path(metadata_dir, folder.name)
        if meta:
            read_metadata(meta)
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
                meta = metadata_path(metadata_dir, folder.name)
                res = grade(
                    folder, target, labels_dir,
                    replace(options, uid=uid, quiet=True, metadata=meta),
                )  # fmt: skip
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
    released = options.release_private
    _write_csv(csv_path, rows, test_names, released, with_attempts=metadata_dir is not None)
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


PROVENANCE = ("hidden_data", "kit")  # what each row was graded with
ATTEMPTS = ("attempts", "attempts_in_period")  # from submission_metadata.json, when given


def _write_csv(csv_path, rows, test_names, released, with_attempts):
    """One row per submission, written atomically. Until ``released``, the private parts read
    "hidden" and score / max_score count the shown tests only."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    extra_columns = PROVENANCE + (ATTEMPTS if with_attempts else ())
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["submission", "score", "max_score", *test_names, *extra_columns])
        for name in sorted(rows):
            res = rows[name]
            counted = [
                t for t in res["tests"] if released or t.get("visibility", "visible") == "visible"
            ]
            by_name = {t["name"]: _cell(t, released) for t in res["tests"]}
            extra = res.get("extra_data") or {}
            values = {
                "hidden_data": str(extra.get("hidden_data_sha256", ""))[:12],
                "kit": extra.get("kit_commit") or extra.get("kit_version", ""),
                "attempts": extra.get("attempts", ""),
                "attempts_in_period": extra.get("attempts_in_period", ""),
            }
            writer.writerow(
                [
                    name,
                    f"{sum(t['score'] for t in counted):g}",
                    f"{sum(t['max_score'] for t in counted):g}",
                    *[by_name.get(n, "") for n in test_names],
                    *[values[c] for c in extra_columns],
                ]
            )
    os.replace(tmp, csv_path)


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
