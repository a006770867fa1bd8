"""``python -m autograder similarity UPLOADS_DIR``: every pair of uploads compared, for copies.

Prediction files are compared by their shared mistakes against what independent models of
the same accuracies would share (:mod:`autograder.mistakes`); code files by winnowed token
fingerprints with the release's own starter code taken out (:mod:`autograder.fingerprints`).
Writes a ranked CSV and an HTML page that shows the top pairs side by side. Nothing here is a
verdict: it orders the pairs worth reading.
"""

import csv
import io
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .assignment import load_assignment
from .fingerprints import file_fingerprints
from .grade import find_submission_root
from .mistakes import MIN_UPLOADS, answer_matrix, compare_predictions
from .overlap import shared
from .predictions import PredictionError, read_capped, read_labels, read_predictions

MAX_CODE_BYTES = 5_000_000  # a training script embeds the kit: far larger than one module
COMMON_MIN = 5  # a fingerprint in more uploads than this (and than the share) is common code
COMMON_SHARE = 0.2
SHRINK = 10  # fingerprints added to the smaller file's count: tiny files cannot score 1
CSV_ROWS = 1000  # pairs per file in the CSV (0: all)
TOP = 20  # pairs per file shown side by side


class SimilarityError(ValueError):
    """Bad input to the similarity command (one line that says what to do)."""


@dataclass
class FileResult:
    """The comparison of one file over all uploads."""

    file: str
    kind: str  # "predictions" or "code"
    names: list  # uploads that have a usable copy, in matrix order
    score: np.ndarray  # n x n, higher = more alike (the ranking)
    columns: dict  # extra n x n (or per-upload, length n) arrays for the CSV
    skipped: dict = field(default_factory=dict)  # upload -> why it was left out
    detail: dict = field(default_factory=dict)  # what the HTML page shows per upload
    note: str = ""

    def ranked(self, limit=0):
        """``[(a, b)]`` index pairs, most alike first (ties: by name)."""
        n = len(self.names)
        iu, ju = np.triu_indices(n, 1)
        order = np.lexsort((ju, iu, -self.score[iu, ju]))
        if limit:
            order = order[:limit]
        return [(int(iu[o]), int(ju[o])) for o in order]


def upload_folders(uploads_dir):
    """``{name: folder}`` of the sub-folders of ``uploads_dir`` (as grade-all reads them)."""
    root = Path(uploads_dir)
    if not root.is_dir():
        raise SimilarityError(
            f"{root} is not a folder; give the folder holding one sub-folder per upload"
        )
    folders = {
        p.name: find_submission_root(p)
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    }
    if len(folders) < 2:
        raise SimilarityError(
            f"{root}: {len(folders)} upload folder(s); at least 2 are needed to compare"
        )
    return folders


# ---------------------------------------------------------------- prediction files
def compare_prediction_file(part, labels, folders):
    """One prediction file over all uploads (:mod:`autograder.mistakes`)."""
    names, preds, skipped = [], [], {}
    for name, folder in folders.items():
        values, error = read_predictions(folder / part.file, part, len(labels))
        if error:
            skipped[name] = error
        else:
            names.append(name)
            preds.append(values)
    if len(names) < MIN_UPLOADS:
        return FileResult(part.file, "predictions", names, np.zeros((len(names),) * 2), {},
                          skipped, note=f"only {len(names)} readable copies: not compared")  # fmt: skip
    A = answer_matrix(preds, len(labels))
    y = np.asarray(labels, dtype=np.int64)
    res = compare_predictions(A, y, part.num_classes)
    accuracy = 1 - res["errors"] / len(labels)
    n = len(names)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(res["E"] > 0, res["S"] / res["E"], np.inf)
    pairs = n * (n - 1) // 2
    columns = {
        "shared_wrong": res["S"],
        "expected_shared_wrong": res["E"],
        "ratio": ratio,
        "log10_p": res["log10p"],
        "log10_p_all_pairs": np.minimum(res["log10p"] + np.log10(pairs), 0.0),
        "accuracy_a": accuracy,
    }
    return FileResult(part.file, "predictions", names, -res["log10p"], columns, skipped,
                      detail={"answers": A, "labels": y})  # fmt: skip


# ---------------------------------------------------------------- code files
_WORKER_CACHE = {}  # per process: the tokens of every text seen (module docstring there)


def _fingerprint_upload(texts):
    return [file_fingerprints(t, cache=_WORKER_CACHE) for t in texts]


def fingerprint_all(groups, jobs):
    """``file_fingerprints`` of each text of each group (one group per upload, so that a
    training script finds the upload's own transformer_utils.py already tokenised), on
    ``jobs`` processes."""
    if jobs <= 1 or len(groups) < 8:
        return [_fingerprint_upload(g) for g in groups]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_fingerprint_upload, groups, chunksize=4))


def starter_hashes(starter_dir, jobs=1):
    """The fingerprints of every Python file of the student release: code every upload
    starts from, so it is no evidence of copying."""
    files = sorted(Path(starter_dir).rglob("*.py"))
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    prints = _fingerprint_upload(texts)
    return set().union(*(set(h.tolist()) for h, _, _ in prints))


def build_starter(assignment_path, out_dir):
    """The student release (``python -m instructor release``) of the assignment, into
    ``out_dir``; needs the instructor's repository."""
    try:
        from instructor.release import build_release
    except ImportError:
        raise SimilarityError(
            "the instructor package is not here to build the starter code; give --starter "
            "with a release folder (python -m instructor release DIR)"
        ) from None
    try:
        build_release(Path(out_dir) / "release", assignment_path=assignment_path)
    except Exception as exc:  # ReleaseError and the like: the message names the file
        raise SimilarityError(
            f"cannot build the starter code ({exc}); give --starter with a release folder"
        ) from None
    return Path(out_dir) / "release"


def read_code(files, folders):
    """``({file: {upload: text}}, {file: {upload: why not}})`` of the code files."""
    texts, skipped = {f: {} for f in files}, {f: {} for f in files}
    for name, folder in folders.items():
        for file in files:
            try:
                data = read_capped(folder / file, MAX_CODE_BYTES)
                texts[file][name] = data.decode("utf-8", "replace")
            except PredictionError as exc:
                skipped[file][name] = f"{file}: {exc}"
    return texts, skipped


def compare_code_files(files, folders, starter, jobs=1):
    """Each code file over all uploads (:func:`compare_code_file`), fingerprinted per upload."""
    texts, skipped = read_code(files, folders)
    names = list(folders)
    groups = [[texts[f][u] for f in files if u in texts[f]] for u in names]
    prints = {f: {} for f in files}
    for u, result in zip(names, fingerprint_all(groups, jobs)):
        present = [f for f in files if u in texts[f]]
        for f, p in zip(present, result):
            prints[f][u] = p
    return [
        compare_code_file(f, list(texts[f]), list(texts[f].values()), list(prints[f].values()),
                          starter, skipped[f])
        for f in files
    ]  # fmt: skip


def compare_code_file(file, names, texts, prints, starter, skipped):
    """One code file over all uploads: fingerprints shared beyond the starter and beyond
    what many uploads share (a fingerprint in more than ``max(COMMON_MIN, COMMON_SHARE * n)``
    uploads is the obvious way to write something, not a copy)."""
    n = len(names)
    owner = np.concatenate(
        [np.full(h.size, u, dtype=np.int64) for u, (h, _, _) in enumerate(prints)]
        or [np.zeros(0, np.int64)]
    )
    item = np.concatenate([h for h, _, _ in prints] or [np.zeros(0, np.uint64)])
    keep = ~np.isin(item, np.fromiter(starter, dtype=np.uint64, count=len(starter)))
    owner, item = owner[keep], item[keep]
    common = np.zeros(0, dtype=np.uint64)
    if item.size:
        held, dense = np.unique(item, return_inverse=True)
        holders = np.bincount(np.unique(dense * n + owner) // n, minlength=held.size)
        common = held[holders > max(COMMON_MIN, COMMON_SHARE * n)]
        keep = holders[dense] <= max(COMMON_MIN, COMMON_SHARE * n)
        owner, item = owner[keep], item[keep]
    S, _ = shared(owner, item, n)
    size = np.diag(S).astype(np.float64)
    np.fill_diagonal(S, 0)
    smaller = np.minimum(size[:, None], size[None, :])
    union = size[:, None] + size[None, :] - S
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.where(union > 0, S / union, 0.0)
        containment = np.where(smaller > 0, S / smaller, 0.0)
    score = S / (smaller + SHRINK)
    columns = {
        "shared_fingerprints": S,
        "jaccard": jaccard,
        "containment": containment,
        "fingerprints_a": size,
    }
    kept = set(item.tolist())
    detail = {"texts": texts, "prints": prints, "kept": kept}
    note = (
        f"{len(starter)} starter fingerprints and {common.size} common ones (in more than "
        f"{max(COMMON_MIN, int(COMMON_SHARE * n))} uploads) left out"
    )
    return FileResult(file, "code", names, score, columns, skipped, detail, note)


# ---------------------------------------------------------------- output
CSV_COLUMNS = [
    "file", "rank", "upload_a", "upload_b", "score", "shared_wrong", "expected_shared_wrong",
    "ratio", "log10_p", "log10_p_all_pairs", "accuracy_a", "accuracy_b",
    "shared_fingerprints", "jaccard", "containment", "fingerprints_a", "fingerprints_b",
]  # fmt: skip


def _value(x):
    if isinstance(x, (float, np.floating)):
        return "inf" if np.isinf(x) else f"{x:.6g}"
    return str(x)


def csv_rows(results, limit=CSV_ROWS):
    for res in results:
        for rank, (a, b) in enumerate(res.ranked(limit), start=1):
            row = {"file": res.file, "rank": rank, "upload_a": res.names[a],
                   "upload_b": res.names[b], "score": res.score[a, b]}  # fmt: skip
            for key, values in res.columns.items():
                if values.ndim == 1:
                    row[key] = values[a]
                    row[key.replace("_a", "_b")] = values[b]
                else:
                    row[key] = values[a, b]
            yield {k: _value(v) for k, v in row.items()}


def write_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_csv(path, results, limit=CSV_ROWS):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(csv_rows(results, limit))
    write_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- the command
def run(uploads_dir, out_dir, labels_dir=None, assignment=None, starter=None, files=None,
        jobs=None, top=TOP, csv_rows_per_file=CSV_ROWS):  # fmt: skip
    """Compare every pair of uploads; write ``similarity.csv`` and ``similarity.html`` into
    ``out_dir``; return the per-file results."""
    from .similarity_report import render_html

    folders = upload_folders(uploads_dir)
    spec = load_assignment(assignment)
    jobs = jobs or min(2, os.cpu_count() or 1)
    results = []
    parts = [p for p in spec.predictions if files is None or p.file in files]
    if parts and labels_dir is None:
        print(
            "similarity: no --labels, so the prediction files are not compared (their "
            "mistakes need the true labels)",
            file=sys.stderr,
        )
    elif parts:
        labels = read_labels(labels_dir, parts)
        for part in parts:
            results.append(compare_prediction_file(part, labels[part.file], folders))
    code_files = files or ["transformer_utils.py"] + [
        r.file for r in spec.required_files if r.file.endswith(".py")
    ]
    code_files = [f for f in code_files if f.endswith(".py")]
    if code_files:
        with tempfile.TemporaryDirectory() as tmp:
            start = Path(starter) if starter else build_starter(spec.path, tmp)
            if not start.is_dir():
                raise SimilarityError(
                    f"--starter {start}: not a folder; give a release folder (python -m instructor release DIR)"
                )
            hashes = starter_hashes(start, jobs)
        results += compare_code_files(code_files, folders, hashes, jobs)
    out = Path(out_dir)
    write_csv(out / "similarity.csv", results, csv_rows_per_file)
    write_atomic(out / "similarity.html", render_html(results, top, uploads=len(folders)))
    return results


def main(args):
    results = run(
        args.uploads, args.out, args.labels, args.assignment, args.starter, args.files,
        args.jobs, args.top, args.csv_rows,
    )  # fmt: skip
    for res in results:
        best = res.ranked(1)
        line = f"{res.file}: {len(res.names)} uploads compared"
        if best and res.score.size:
            a, b = best[0]
            line += f"; most alike: {res.names[a]} and {res.names[b]} (score {res.score[a, b]:.3g})"
        if res.skipped:
            line += f"; {len(res.skipped)} left out (see the HTML page)"
        print(line, file=sys.stderr)
    print(f"wrote {Path(args.out) / 'similarity.csv'} and similarity.html", file=sys.stderr)
    return 0
