"""Prediction files (``test_flower.txt``, ``test_pixmo.txt``): strict parsing, exact scoring.

Format: one integer class per line. Accepted: a trailing newline, CRLF line ends, a UTF-8
BOM. Anything else (blank line, header, spaces, signs, out-of-range class, a number of
thousands of digits, more lines than labels) is rejected with its line number. Missing lines at the end count as wrong answers.
Accuracy = correct / number of labels; the threshold is compared in integer arithmetic.

A demo run on synthetic data writes a first line that says so (``kit.runs.
SYNTHETIC_MARKER``, "# SYNTHETIC DATA: ..."); such a file gets 0 points and one line that
says why, rather than a line-1 format error or a near-zero accuracy the student cannot
explain.
"""

import os
import stat
from fractions import Fraction


class PredictionError(ValueError):
    """A file from the submission cannot be graded (the message names the line or the problem)."""


def read_capped(path, max_bytes):
    """Read a regular file (never a symlink, FIFO or device), refusing oversized files fast.

    Used for every file that a student can control: uploads and what the sandbox wrote back.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PredictionError("file not found") from None
    except OSError as exc:
        raise PredictionError(
            f"cannot open the file ({exc.strerror}; symbolic links are not accepted)"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PredictionError("not a regular file")
        if st.st_size > max_bytes:
            raise PredictionError(f"file too large ({st.st_size} bytes; at most {max_bytes})")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise PredictionError(f"cannot read the file ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise PredictionError(f"file too large (more than {max_bytes} bytes)")
    return data


def parse_lines(data, num_classes, max_lines=None):
    """Parse bytes into a list of ints; raise :class:`PredictionError` naming the line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        bad = next(i for i, b in enumerate(data) if b > 127)
        line_no = data[:bad].count(b"\n") + 1
        raise PredictionError(f"line {line_no}: non-ASCII character") from None
    if text == "":
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the trailing newline
    values = []
    for number, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if not (line.isascii() and line.isdigit()):
            shown = line if len(line) <= 30 else line[:30] + "..."
            raise PredictionError(
                f"line {number}: {shown!r} is not a class number (one integer per line)"
            )
        if len(line.lstrip("0")) > len(str(num_classes)):  # never int() thousands of digits
            raise PredictionError(
                f"line {number}: a number of {len(line)} digits is out of range "
                f"(0..{num_classes - 1})"
            )
        value = int(line)
        if value >= num_classes:
            raise PredictionError(
                f"line {number}: class {value} is out of range (0..{num_classes - 1})"
            )
        if max_lines is not None and number > max_lines:
            raise PredictionError(f"line {number}: more predictions than test images ({max_lines})")
        values.append(value)
    return values


def read_labels(labels_dir, parts):
    """The instructor's true labels: ``{file: [int, ...]}`` for each prediction part."""
    labels = {}
    for part in parts:
        path = os.path.join(labels_dir, part.file)
        try:
            values = parse_lines(read_capped(path, 10_000_000), part.num_classes)
        except PredictionError as exc:
            hint = ""
            if str(exc) == "file not found":
                names = ", ".join(p.file for p in parts)
                hint = f" (--labels must be the folder that holds the true {names})"
            raise PredictionError(f"labels {path}: {exc}{hint}") from None
        if not values:
            raise PredictionError(f"labels {path}: the file is empty")
        labels[part.file] = values
    return labels


def credit(correct, total, threshold, floor, points):
    """Points for ``correct`` of ``total``: full at ``threshold``, linear down to 0 at ``floor``.

    ``threshold`` and ``floor`` are Fractions, so ``correct / total >= threshold`` is decided
    exactly: correct * den >= num * total.
    """
    if total <= 0:
        return 0.0
    accuracy = Fraction(correct, total)
    if accuracy >= threshold:
        return float(points)
    if accuracy <= floor:
        return 0.0
    return float(Fraction(points) * (accuracy - floor) / (threshold - floor))


def is_synthetic(data):
    """True when the first line of a predictions file marks it as made from synthetic data."""
    first = data.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0]
    return first.lstrip().startswith(b"#") and b"synthetic" in first.lower()


def grade_predictions(pred_path, labels, part):
    """Return ``(score, accuracy or None, message)`` for one prediction file."""
    try:
        data = read_capped(pred_path, part.max_bytes)
        if is_synthetic(data):
            return (
                0.0,
                None,
                f"{part.file}: these predictions come from synthetic data (the demo ran "
                "without the real data set and marked the file on its first line); train on "
                f"the real data and upload that run's {part.file}. No credit.",
            )
        preds = parse_lines(data, part.num_classes, max_lines=len(labels))
    except PredictionError as exc:
        where = " in your upload" if str(exc) == "file not found" else ""
        return 0.0, None, f"{part.file}: {exc}{where}. No credit."
    correct = sum(1 for p, y in zip(preds, labels) if p == y)
    total = len(labels)
    score = round(credit(correct, total, part.threshold, part.floor, part.points), 4)
    accuracy = correct / total if total else 0.0
    lines = [
        f"{part.file}: {correct} of {total} correct, accuracy {accuracy:.4f} "
        f"(full credit at {float(part.threshold):.2f}, zero at or below {float(part.floor):.2f}).",
    ]
    if len(preds) < total:
        lines.append(
            f"Only {len(preds)} predictions for {total} test images: the missing ones count as wrong."
        )
    return score, accuracy, " ".join(lines)
