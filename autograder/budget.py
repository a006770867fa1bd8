"""How many uploads a student has left in the current period (Gradescope's metadata).

Gradescope writes ``/autograder/submission_metadata.json`` beside each upload: its
``created_at`` and ``previous_submissions`` (each with its ``submission_time`` and, when it was
graded, its ``results``). The budget counts this upload and the earlier ones of the last
``period_hours``; beyond ``count``, the upload is still graded in full, but its public scores
are withheld, since showing them is exactly what lets repeated uploads probe the labels.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .predictions import PredictionError, read_capped

MAX_METADATA_BYTES = 5_000_000  # a long history of previous results still fits


class MetadataError(ValueError):
    """submission_metadata.json is missing or malformed (one line, naming what to fix)."""


def read_metadata(path):
    """The parsed ``submission_metadata.json`` at ``path``."""
    try:
        data = json.loads(read_capped(path, MAX_METADATA_BYTES).decode("utf-8"))
    except PredictionError as exc:
        raise MetadataError(f"{path}: {exc}; give Gradescope's submission_metadata.json") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(
            f"{path}: not valid JSON ({exc}); give the file as Gradescope wrote it"
        ) from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: expected a JSON object with previous_submissions")
    return data


def _time(value, where):
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MetadataError(f"{where}: {value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def previous_times(metadata):
    """The times of the earlier uploads, oldest first."""
    previous = metadata.get("previous_submissions") or []
    if not isinstance(previous, list):
        raise MetadataError("submission_metadata.json: previous_submissions must be a list")
    times = []
    for i, item in enumerate(previous):
        if not isinstance(item, dict) or "submission_time" not in item:
            raise MetadataError(f"previous_submissions[{i}]: no submission_time")
        times.append(_time(item["submission_time"], f"previous_submissions[{i}]"))
    return sorted(times)


@dataclass
class BudgetStatus:
    attempts: int  # every upload so far, this one included
    in_period: int  # this one and the earlier ones of the current period
    count: int  # the budget per period (0: unlimited)
    period_hours: float
    next_free: datetime = None  # when the oldest upload of the period stops counting

    @property
    def left(self):
        return None if not self.count else max(0, self.count - self.in_period)

    @property
    def over(self):
        return bool(self.count) and self.in_period > self.count

    def describe(self):
        """The feedback line about the budget."""
        if not self.count:
            return f"Upload {self.attempts} (no limit on uploads)."
        period = f"{self.period_hours:g} hours"
        if self.over:
            return (
                f"You have used your {self.count} uploads of the last {period}: this upload "
                f"is graded in full, but its public scores are withheld. They are shown "
                f"again for uploads after {self.next_free:%Y-%m-%d %H:%M %Z}."
            )
        return (
            f"Upload {self.in_period} of {self.count} in the last {period}: {self.left} "
            "left in this period with public scores."
        )


def budget_status(metadata, count=0, period_hours=24.0):
    """Where this upload stands: ``count`` uploads with public scores per ``period_hours``."""
    times = previous_times(metadata)
    now = _time(metadata["created_at"], "created_at") if "created_at" in metadata else None
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(hours=period_hours)
    recent = [t for t in times if start < t <= now]
    return BudgetStatus(
        attempts=len(times) + 1,
        in_period=len(recent) + 1,
        count=count,
        period_hours=period_hours,
        next_free=(recent[0] + timedelta(hours=period_hours)) if recent else now,
    )


def previous_extra(metadata, key):
    """``key`` of the ``extra_data`` of the latest earlier upload that has it, else None."""
    previous = metadata.get("previous_submissions") or []
    for item in reversed(previous if isinstance(previous, list) else []):
        results = item.get("results") if isinstance(item, dict) else None
        extra = results.get("extra_data") if isinstance(results, dict) else None
        if isinstance(extra, dict) and isinstance(extra.get(key), str):
            return extra[key]
    return None
