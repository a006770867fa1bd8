"""Hidden reference data, prepared for grading without importing torch in the grader.

``autograder/reference_data/<id>.pkl`` (list of ``{'input', 'target'}``),
``<id>_mistakes.pkl`` (list, aligned with the cases, of ``{description: output}``) and
``<id>_grading.pkl`` (the measured tolerance of each case) hold torch tensors, so reading them needs torch (about 2.5 s to import). The grader only needs
numbers: each exercise is prepared once into

* ``inputs.pkl``   - the case inputs only (they go into the sandbox; targets never do),
* ``targets.npz``  - the flattened targets (``c<case>/<path>`` keys, plain arrays),
* ``mistakes.npz`` + ``mistakes.json`` - the known-mistake outputs, their descriptions and
  the tolerance of each case,

keyed by the SHA-256 of the source files. The Gradescope zip ships them prepared
(``autograder/prepared/``); a local run caches them under ``~/.cache`` (or
``$AUTOGRADER_CACHE``), which the sandbox cannot see.
"""

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .assignment import PACKAGE_DIR

REFERENCE_DIR = PACKAGE_DIR / "reference_data"
PREPARED_DIR = PACKAGE_DIR / "prepared"


FORMAT = b"prepared-v3\n"  # bump when the prepared layout changes (invalidates caches)


class DataError(Exception):
    """Hidden reference data missing or unreadable."""


def cache_dir():
    return Path(
        os.environ.get("AUTOGRADER_CACHE", Path.home() / ".cache" / "course-kit-autograder")
    )


def flatten(obj, prefix, out):
    """Flatten a tensor / tuple / list / dict of tensors into ``{key: ndarray}``."""
    if isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            flatten(item, f"{prefix}/{i}", out)
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            flatten(obj[key], f"{prefix}/{key}", out)
    else:
        out[prefix] = obj.detach().cpu().numpy() if hasattr(obj, "detach") else np.asarray(obj)
    return out


def encode_inputs(obj):
    """Replace torch tensors by ``{"__tensor__": ndarray}`` so the pickle is deterministic
    (pickled tensors embed random storage keys); the sandbox turns them back into tensors."""
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):
        return {"__tensor__": obj.detach().cpu().numpy()}
    if isinstance(obj, dict):
        return type(obj)((k, encode_inputs(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode_inputs(v) for v in obj)
    return obj


def _sources(ex_id, reference_dir):
    main = Path(reference_dir) / f"{ex_id}.pkl"
    mistakes = Path(reference_dir) / f"{ex_id}_mistakes.pkl"
    grading = Path(reference_dir) / f"{ex_id}_grading.pkl"
    if not main.is_file():
        raise DataError(
            f"hidden reference data {main} is missing; run python -m instructor.reference_data"
        )
    digest = hashlib.sha256(FORMAT + main.read_bytes())
    for extra in (mistakes, grading):
        if extra.is_file():
            digest.update(extra.name.encode() + extra.read_bytes())
    return (
        main,
        mistakes if mistakes.is_file() else None,
        grading if grading.is_file() else None,
        digest.hexdigest()[:20],
    )


def prepare(ex_id, out_dir, reference_dir=REFERENCE_DIR):
    """Convert one exercise's pickles into the prepared, torch-free form in ``out_dir``."""
    import torch  # noqa: F401  (unpickling the tensors needs it)

    main, mistakes_path, grading_path, digest = _sources(ex_id, reference_dir)
    with open(main, "rb") as fh:
        cases = pickle.load(fh)
    targets = {}
    for i, case in enumerate(cases):
        flatten(case["target"], f"c{i}", targets)
    descriptions, mistake_arrays = [], {}
    if mistakes_path:
        with open(mistakes_path, "rb") as fh:
            mistakes = pickle.load(fh)
        for i, per_case in enumerate(mistakes):
            for desc, value in per_case.items():
                if desc not in descriptions:
                    descriptions.append(desc)
                flatten(value, f"m{descriptions.index(desc)}/c{i}", mistake_arrays)
    tolerances = None
    if grading_path:
        with open(grading_path, "rb") as fh:
            grading = pickle.load(fh)
        tolerances = [
            {k: c.get(k) for k in ("rtol", "atol", "strict_atol", "note")} for c in grading["cases"]
        ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inputs.pkl").write_bytes(
        pickle.dumps([encode_inputs(c["input"]) for c in cases], protocol=4)
    )
    np.savez(out_dir / "targets.npz", **targets)
    np.savez(out_dir / "mistakes.npz", **mistake_arrays)
    (out_dir / "mistakes.json").write_text(
        json.dumps({"descriptions": descriptions, "tolerances": tolerances}), encoding="utf-8"
    )
    (out_dir / "source.sha").write_text(digest, encoding="utf-8")
    return out_dir


class ExerciseData:
    """Prepared data of one exercise, loaded into memory."""

    def __init__(self, folder):
        folder = Path(folder)
        self.inputs_pickle = (folder / "inputs.pkl").read_bytes()
        with np.load(folder / "targets.npz", allow_pickle=False) as z:
            self.targets = {k: z[k] for k in z.files}
        with np.load(folder / "mistakes.npz", allow_pickle=False) as z:
            mistakes = {k: z[k] for k in z.files}
        info = json.loads((folder / "mistakes.json").read_text(encoding="utf-8"))
        self.mistake_names = info["descriptions"]
        self.tolerances = info["tolerances"]  # one {"rtol", "atol", ...} per case, or None
        self.mistakes = {}  # description -> {c<i>/<path>: array}
        for key, arr in mistakes.items():
            m, rest = key.split("/", 1)
            self.mistakes.setdefault(self.mistake_names[int(m[1:])], {})[rest] = arr
        self.num_cases = len({k.split("/", 1)[0] for k in self.targets})


def load_exercise(ex_id, reference_dir=REFERENCE_DIR):
    """Prepared data for ``ex_id``: shipped (zip), cached, or prepared now."""
    reference_dir = Path(reference_dir)
    *_, digest = _sources(ex_id, reference_dir)
    shipped = PREPARED_DIR / ex_id
    if reference_dir == REFERENCE_DIR and (shipped / "source.sha").is_file():
        if (shipped / "source.sha").read_text().strip() == digest:
            return ExerciseData(shipped)
    cached = cache_dir() / f"{ex_id}-{digest}"
    if not (cached / "source.sha").is_file():
        cache_dir().mkdir(parents=True, exist_ok=True)
        os.chmod(cache_dir(), 0o700)
        # A folder of its own: graders in other processes AND threads (grade-all) may be
        # preparing the same exercise at the same time.
        tmp = Path(tempfile.mkdtemp(prefix=f".{ex_id}-{digest}-", dir=cache_dir()))
        prepare(ex_id, tmp, reference_dir)
        try:
            os.replace(tmp, cached)
        except OSError:  # another grader won the race: its copy is the same
            shutil.rmtree(tmp, ignore_errors=True)
    return ExerciseData(cached)
