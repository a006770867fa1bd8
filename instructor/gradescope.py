"""``python -m instructor gradescope OUT_ZIP --labels LABELS_DIR``: the Gradescope autograder zip.

Layout (Gradescope unpacks it into ``/autograder/source``)::

    setup.sh                 installs a CPU build of torch and the rest (run once per image)
    requirements-lock.txt    the versions setup.sh installs (those the grader was tested with)
    run_autograder           grades /autograder/submission into /autograder/results
    test_functions.py        the exercise declarations (read, never imported, by the grader)
    kit/exercise_checks/     the kit's trusted runners, run inside the sandbox (no solution code)
    autograder/              the grader package, its assignment.yml,
      reference_data/        the hidden reference data of the graded exercises,
      prepared/              the same, prepared so the grader needs no torch import
    labels/                  the true test_flower.txt / test_pixmo.txt

No solution code ships: the zip is checked for solution markers and for transformer_utils.py.
Entries are sorted, with fixed timestamps and permissions: same inputs, same bytes.
"""

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from autograder import data as agdata
from autograder.assignment import KIT_ROOT, load_assignment, sandbox_kit_files
from autograder.assignment import assignment_path as course_file
from autograder.predictions import PredictionError, read_labels

from .markers import ReleaseError, find_regions

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
TEMPLATES = Path(__file__).resolve().parent / "gradescope_files"


def _add(zf, name, payload, executable=False):
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
    info.create_system = 3  # unix, so the permissions are honoured
    zf.writestr(info, payload)


def deterministic_npz(arrays):
    """An ``.npz`` archive whose bytes depend only on the arrays (fixed entry timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_TIME)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def build_zip(out_zip, labels_dir, root=KIT_ROOT, assignment_path=None):
    """Write the Gradescope zip; return the sorted list of entry names."""
    root = Path(root)
    assignment_path = course_file(assignment_path)
    assignment = load_assignment(assignment_path)
    entries = {}
    if assignment.predictions and labels_dir is None:
        raise ReleaseError(
            f"{assignment.path.name} grades prediction files: pass --labels with their true labels"
        )
    labels_dir = Path(labels_dir or ".")
    try:
        read_labels(labels_dir, assignment.predictions)  # refuse to ship broken labels
    except PredictionError as exc:
        raise ReleaseError(str(exc)) from None
    for part in assignment.predictions:
        entries[f"labels/{part.file}"] = ((labels_dir / part.file).read_bytes(), False)
    for src in sorted((root / "autograder").glob("*.py")):
        entries[f"autograder/{src.name}"] = (src.read_bytes(), False)
    entries["autograder/assignment.yml"] = (assignment_path.read_bytes(), False)
    entries["test_functions.py"] = ((root / "test_functions.py").read_bytes(), False)
    for name, payload in sandbox_kit_files(root).items():
        entries[name] = (payload, False)
    with tempfile.TemporaryDirectory() as tmp:
        for ex_id in assignment.student_exercises:
            for suffix in (".pkl", "_mistakes.pkl", "_grading.pkl"):
                src = root / "autograder" / "reference_data" / f"{ex_id}{suffix}"
                if src.is_file():
                    entries[f"autograder/reference_data/{src.name}"] = (src.read_bytes(), False)
            folder = agdata.prepare(
                ex_id, Path(tmp) / ex_id, root / "autograder" / "reference_data"
            )
            for name in ("targets.npz", "mistakes.npz"):
                with np.load(folder / name, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                entries[f"autograder/prepared/{ex_id}/{name}"] = (deterministic_npz(arrays), False)
            for name in ("inputs.pkl", "mistakes.json", "source.sha"):
                entries[f"autograder/prepared/{ex_id}/{name}"] = (
                    (folder / name).read_bytes(),
                    False,
                )
    for name in ("setup.sh", "run_autograder"):
        entries[name] = ((TEMPLATES / name).read_bytes(), True)
    entries["requirements-lock.txt"] = ((root / "requirements-lock.txt").read_bytes(), False)
    # No solution code may ship.
    for name, (payload, _) in entries.items():
        if Path(name).name == "transformer_utils.py":
            raise ReleaseError(f"{name}: solution file in the autograder zip")
        if name.endswith(".py") and find_regions(payload.decode("utf-8"), name):
            raise ReleaseError(f"{name}: contains solution markers; refusing to ship it")
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp_zip = out_zip.with_name(out_zip.name + ".tmp")
    with zipfile.ZipFile(tmp_zip, "w") as zf:
        for name in sorted(entries):
            payload, executable = entries[name]
            _add(zf, name, payload, executable)
    tmp_zip.replace(out_zip)
    return sorted(entries)
