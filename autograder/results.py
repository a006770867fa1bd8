"""results.json in Gradescope's format, always written, always valid, written atomically."""

import json
import math
import os
import tempfile
from pathlib import Path

VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")


def _clean_number(x):
    x = float(x)
    return round(x, 4) if math.isfinite(x) else 0.0


def normalise(results):
    """Coerce a results dict into something Gradescope accepts (finite numbers, strings)."""
    tests = []
    for t in results.get("tests", []):
        vis = t.get("visibility", "visible")
        tests.append(
            {
                "name": str(t.get("name", "test")),
                "number": str(t.get("number", "")),
                "score": _clean_number(t.get("score", 0)),
                "max_score": _clean_number(t.get("max_score", 0)),
                "visibility": vis if vis in VISIBILITIES else "visible",
                "output": str(t.get("output", ""))[:20000],
                **({"status": t["status"]} if t.get("status") in ("passed", "failed") else {}),
            }
        )
    out = {
        "score": _clean_number(sum(t["score"] for t in tests)),
        "execution_time": _clean_number(results.get("execution_time", 0)),
        "output": str(results.get("output", ""))[:50000],
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }
    board = [
        {
            "name": str(e["name"]),
            "value": _clean_number(e["value"]),
            "order": e.get("order", "desc"),
        }
        for e in results.get("leaderboard", [])
    ]
    if board:
        out["leaderboard"] = board
    return out


def write_results(path, results):
    """Write ``results`` to ``path`` atomically (temp file in the same dir, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(normalise(results), indent=2, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
