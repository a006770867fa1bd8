"""What the sandbox hands back, read as hostile data.

Student code runs in the sandbox and can write, or make the sandbox write, anything in its
outputs folder (``status.json``, ``outputs.npz``, ``stage.txt``, ``stack.txt``): it may patch
``numpy.savez``, raise an exception whose text holds a lone surrogate, or leave a thread that
rewrites the files after the report. So every file is read without following symbolic links
and with a size cap, parsed with limits (JSON nesting, integer digits, archive members and
their expanded size, ``.npy`` headers) and validated before use: only plain numeric arrays
(bool, integer, float, complex; no object, string or structured dtype) with sane names and
shapes come out. Any failure is an :class:`EvidenceError` (a ``ValueError``) with a one-line
reason, which the grader turns into that exercise's zero; no input makes these functions
raise anything else.
"""

import io
import json
import math
import os
import re
import zipfile

import numpy as np

from .predictions import read_capped

MAX_JSON_BYTES = 200_000
MAX_MEMBERS = 4096  # arrays in one outputs archive
MAX_NDIM = 32
MAX_KEY = 200
NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex
_KEY = re.compile(f"[ -~]{{1,{MAX_KEY}}}")  # printable ASCII


class EvidenceError(ValueError):
    """A file from the sandbox is missing, oversized or malformed (one-line reason)."""


def shown(value, limit=80):
    """A short, printable rendering of a hostile value for a feedback line."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def read_text(path, max_bytes):
    """A text file written in the sandbox: no symlinks, capped, undecodable bytes replaced."""
    try:
        return read_capped(path, max_bytes).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        raise EvidenceError(f"{os.path.basename(path)}: {exc}") from None


def read_json(path, max_bytes=MAX_JSON_BYTES):
    """A JSON file written in the sandbox; nesting, digits and size are bounded."""
    text = read_text(path, max_bytes)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad syntax, 4300+ digits, deep nesting
        raise EvidenceError(
            f"{os.path.basename(path)} is not valid JSON ({type(exc).__name__})"
        ) from None


def _text(value, limit):
    return value[:limit] if isinstance(value, str) else ""


def load_status(path):
    """The exercise process's report: ``{"kind", "message", "traceback", "types"}``, each of
    the expected type (strings; ``types`` maps output keys to type names)."""
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise EvidenceError("status.json is not the report the sandbox writes")
    types = obj.get("types")
    types = types if isinstance(types, dict) else {}
    return {
        "kind": obj["kind"][:40],
        "message": _text(obj.get("message"), 1500),
        "traceback": _text(obj.get("traceback"), 2500),
        "types": {
            k: v[:200]
            for k, v in list(types.items())[:MAX_MEMBERS]
            if isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_KEY
        },
    }


def _small_int(value):
    return value if type(value) is int and -(2**31) <= value < 2**31 else None


def clean_record(obj):
    """The supervisor's record of one exercise process, or None when it is not one."""
    if not isinstance(obj, dict):
        return None
    return {
        "timed_out": obj.get("timed_out") is True,
        "exit_code": _small_int(obj.get("exit_code")),
        "signal": _small_int(obj.get("signal")),
    }


def clean_startup(obj):
    """``{"ok": True}`` or ``{"error": str}``."""
    if isinstance(obj, dict) and obj.get("ok") is True:
        return {"ok": True}
    error = obj.get("error") if isinstance(obj, dict) else None
    return {"error": _text(error, 2000) or "the sandbox's start-up report is malformed"}


def clean_probe(obj):
    """The probe's report: uid, lists of paths, an error string, whether exec is refused."""
    if not isinstance(obj, dict):
        return {"error": "the probe's report is malformed"}
    out = {"uid": _small_int(obj.get("uid")), "exec_refused": obj.get("exec_refused") is True}
    for key in ("readable", "writable"):
        items = obj.get(key)
        items = items if isinstance(items, list) else []
        out[key] = [p[:4096] for p in items[:1000] if isinstance(p, str)]
    if "error" in obj:
        out["error"] = _text(obj["error"], 2000) or "malformed"
    return out


def _header(fh):
    """(shape, fortran_order, dtype) of an ``.npy`` member, its header bounded."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh, max_header_size=10_000)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh, max_header_size=10_000)
    raise ValueError(f"unsupported .npy version {version}")


def _member(zf, info):
    """One archive member as a plain numeric ndarray, validated before its data is read."""
    with zf.open(info) as fh:
        shape, fortran, dtype = _header(fh)
        if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
            raise EvidenceError(f"dtype {shown(str(dtype), 40)} is not a plain number type")
        if len(shape) > MAX_NDIM:
            raise EvidenceError(f"{len(shape)} dimensions")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise EvidenceError("the array's data is missing")
        data = fh.read(nbytes + 1)
    if len(data) != nbytes:
        raise EvidenceError("the array's data has the wrong length")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def load_outputs(path, max_bytes):
    """The ``.npz`` archive of outputs: ``{key: ndarray}``; every member must be an ``.npy``
    of a plain numeric dtype with a printable name. Never unpickles anything."""
    raw = read_capped(path, max_bytes)
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except Exception as exc:  # BadZipFile, a bad header, ...
        raise EvidenceError(f"not a valid .npz archive ({type(exc).__name__})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise EvidenceError(f"{len(infos)} members (at most {MAX_MEMBERS})")
        if sum(info.file_size for info in infos) > 4 * max_bytes:
            raise EvidenceError("archive expands too much")  # refused before inflating
        arrays = {}
        for info in infos:
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else None
            if key is None or not _KEY.fullmatch(key) or key in arrays:
                raise EvidenceError(f"member {shown(name)} is not an array of the outputs")
            try:
                arrays[key] = _member(zf, info)
            except EvidenceError as exc:
                raise EvidenceError(f"member {shown(name)}: {exc}") from None
            except Exception as exc:  # a malformed header, bad compressed data, wrong CRC
                raise EvidenceError(
                    f"member {shown(name)} is not a valid .npy array ({type(exc).__name__})"
                ) from None
    return arrays


_THREAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-fA-F]+")
_FRAME = re.compile(r'^\s*File "([^"\n]{1,4096})", line (\d{1,9}) in ([^\n]{1,200})$')


def running_line(stack_text, source, student_file="transformer_utils.py"):
    """From a faulthandler dump: ``(where, importing)`` for the innermost frame of the
    student's file (e.g. ``"transformer_utils.py:12 in <module>:  while True:"``), the
    current thread first; ``importing`` when that thread was running the module's top level.
    ``("", False)`` when no frame of that file is found."""
    sections, current = [], None
    for line in stack_text.splitlines()[:2000]:
        if _THREAD.match(line):
            current = []
            sections.insert(0 if line.startswith("Current") else len(sections), current)
        elif current is not None:
            m = _FRAME.match(line)
            if m and os.path.basename(m.group(1)) == student_file:
                current.append((int(m.group(2)), m.group(3)))
    lines = source.splitlines() if isinstance(source, str) else []
    for frames in sections:
        if frames:
            number, func = frames[0]  # most recent call first
            code = lines[number - 1].strip() if 1 <= number <= len(lines) else ""
            where = f"{student_file}:{number} in {shown(func, 60)}"
            where += f":  {shown(code, 160)}" if code else ""
            return where, any(f == "<module>" for _, f in frames)
    return "", False
