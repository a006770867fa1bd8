"""What a grade was computed with: the kit's code and the hidden data.

A grade is only comparable with another one graded by the same code on the same hidden
data. results.json records both (``extra_data``), so a regrade can say when either changed
instead of silently moving a student's score.
"""

import hashlib
import json
import subprocess
from pathlib import Path

from .assignment import KIT_ROOT

KIT_VERSION = "0.1.0"  # pyproject.toml's version; the Gradescope zip has no .git to ask
CODE_FILES = ("autograder/*.py", "kit/exercise_checks/*.py", "test_functions.py")


def code_digest(root=KIT_ROOT):
    """SHA-256 of the grading code, so a kit without git history still names its code."""
    digest = hashlib.sha256()
    for pattern in CODE_FILES:
        for path in sorted(Path(root).glob(pattern)):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def git_commit(root=KIT_ROOT):
    """The checked-out commit (with ``+dirty`` for uncommitted changes), or '' without git."""
    if not (Path(root) / ".git").exists():
        return ""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def kit_identity(root=KIT_ROOT):
    """``{"commit", "version"}``: git's commit where there is one; always a version string
    with the code's digest."""
    return {"commit": git_commit(root), "version": f"{KIT_VERSION}+code.{code_digest(root)[:12]}"}


def hidden_data_digest(labels, reference_digests, splits=None):
    """SHA-256 over the true labels (``{file: [int]}``), the graded exercises' reference
    data digests (``{exercise id: digest}``) and the public/private splits (``{file: text}``,
    which decide what the private score is): equal exactly when all of them are."""
    payload = {
        "labels": {name: list(values) for name, values in sorted(labels.items())},
        "exercises": dict(sorted(reference_digests.items())),
        "splits": dict(sorted((splits or {}).items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def regrade_note(previous, current):
    """The feedback line when ``previous`` (a digest or None) differs from ``current``."""
    if not previous or previous == current:
        return ""
    return (
        f"Note: graded with other hidden data (digest {current[:12]}) than the previous "
        f"grading (digest {previous[:12]}); scores may differ for that reason alone."
    )
