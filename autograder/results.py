"""results.json in Gradescope's format, always written, always valid, written atomically.

Much of the text in it comes from student code (exception messages, printed output): every
string is made valid Unicode without control characters (a lone surrogate, a NUL or an
escape sequence becomes U+FFFD), every number finite, so the file is strict JSON in valid
UTF-8, and :func:`safe_print` shows the same text on any console.
"""

import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")
# lone surrogates (from JSON escapes or undecodable names) and control characters but
# tab, newline and carriage return
_UNSAFE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(value, limit=None):
    """``value`` as a string that any JSON parser and UTF-8 console accepts."""
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:
            value = f"<{type(value).__name__}>"
    if limit is not None:
        value = value[:limit]
    return _UNSAFE.sub("\ufffd", value)


def _clean_number(x):
    try:
        x = float(x)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return round(x, 4) if math.isfinite(x) else 0.0


def safe_print(text, file=None):
    """Print ``text`` on a console of any encoding (what it cannot show is escaped); a closed
    or broken stream is ignored: the summary must never end the grader."""
    file = file or sys.stdout
    text = clean_text(text)
    try:
        print(text, file=file, flush=True)
    except UnicodeEncodeError:
        encoding = getattr(file, "encoding", None) or "ascii"
        try:
            print(text.encode(encoding, "backslashreplace").decode(encoding), file=file)
        except (OSError, ValueError, LookupError):
            pass
    except (OSError, ValueError):
        pass


def normalise(results):
    """Coerce a results dict into something Gradescope accepts (finite numbers, strings)."""
    tests = []
    for t in results.get("tests", []):
        vis = t.get("visibility", "visible")
        tests.append(
            {
                "name": clean_text(t.get("name", "test"), 1000),
                "number": clean_text(t.get("number", ""), 100),
                "score": _clean_number(t.get("score", 0)),
                "max_score": _clean_number(t.get("max_score", 0)),
                "visibility": vis if vis in VISIBILITIES else "visible",
                "output": clean_text(t.get("output", ""), 20000),
                **({"status": t["status"]} if t.get("status") in ("passed", "failed") else {}),
            }
        )
    out = {
        "score": _clean_number(sum(t["score"] for t in tests)),
        "execution_time": _clean_number(results.get("execution_time", 0)),
        "output": clean_text(results.get("output", ""), 50000),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }
    board = [
        {
            "name": clean_text(e.get("name", ""), 1000),
            "value": _clean_number(e.get("value", 0)),
            "order": "asc" if e.get("order") == "asc" else "desc",
        }
        for e in results.get("leaderboard", [])
        if isinstance(e, dict)
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
