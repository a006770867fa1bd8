"""Every value from the sandbox or the upload is hostile data: the grader parses it with
limits and validates it, each failure is that item's zero with a clear line, never the
grader's crash, and one bad part never costs the others (fast tier, no sandbox).

A corpus of malformed values (``corpus()``: random bytes, byte-flipped archives, huge and
tiny numbers, wrong dtypes and containers, hostile names and texts; about 1,200 values,
seeded, the same on every run) is fed to each item the grader reads:

* an exercise's evidence (status.json, outputs.npz, the supervisor's record, stage.txt and
  stack.txt of a time-out, the printed output) through ``grade.exercise_tests``, with the
  OTHER exercise's evidence correct: it must keep its full marks;
* a prediction file through ``grade._grade_files``, with the other one correct.

Every result must then be written as strict JSON in valid UTF-8 and print on an ASCII
console. Then the four failures of the issue, end to end through ``grade()`` with a stand-in
sandbox, and a crash injected into each item's grading.
"""

import functools
import io
import json
import random
import struct
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from autograder import compare, evidence, grade, sandbox
from autograder.assignment import load_assignment
from autograder.declarations import read_declarations
from autograder.results import clean_text, normalise, safe_print, write_results

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = load_assignment("cs444_mp3")
DECLS = read_declarations(ROOT / "test_functions.py")
IDS = ["self_attention", "layer_norm"]
SEED = 20240611

# Small stand-ins for the hidden data: two cases, the second with a named output.
_T0 = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
_T1 = np.arange(4, dtype=np.float32)
TARGETS = {"c0": _T0, "c1/out": _T1}
MISTAKES = {"doubled": {"c0": _T0 * 2, "c1/out": _T1 * 2}}
TYPES = {"c0": "torch.Tensor", "c1/out": "torch.Tensor"}


def _exercise_data():
    return SimpleNamespace(
        inputs_pickle=b"", targets=TARGETS, mistakes=MISTAKES, tolerances=None, num_cases=2
    )


# ---------------------------------------------------------------- building evidence
def npz_bytes(arrays, names=None):
    """An .npz archive as np.savez writes it; ``names`` overrides member names."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # a duplicate name, on purpose
        for i, (key, arr) in enumerate(arrays.items()):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=True)
            zf.writestr(names[i] if names else f"{key}.npy", member.getvalue())
    return buf.getvalue()


def raw_zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def npy_header(shape, descr="<f4", fortran=False, version=1):
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header


GOOD = {"c0": _T0, "c1/out": _T1}
GOOD_NPZ = npz_bytes(GOOD)
GOOD_STATUS = json.dumps({"kind": "ok", "message": "", "types": TYPES}).encode()


def _status(**fields):
    return json.dumps({"kind": "ok", "message": "", "types": TYPES, **fields}).encode()


# ---------------------------------------------------------------- the corpus
def _random_bytes(rng, n):
    return rng.randbytes(n)


def _flip(rng, data, flips):
    data = bytearray(data)
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


WEIRD_TEXT = [
    "\ud800",
    "lone \udfff surrogate",
    "\x00nul\x00",
    "\x1b[2J\x1b[31mred",
    "\u202egnp.exe",
    "\U0001f600 emoji",
    "é" * 3000,
    "x" * 190_000,
    "\r\n\r\n",
    "",
]
DTYPES = [
    "U3", "S3", "V4", "M8[s]", "m8[s]", "c8", "c16", "f2", "f8", ">f4", "i1", "i8", "u4",
    "?", "O", [("a", "<f4"), ("b", "<i4")], ("<f4", (2,)),
]  # fmt: skip


def _array(rng, dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "O":
        arr = np.empty(shape, dtype=object)
        arr.fill({"pickled": "object"})
        return arr
    if dt.kind in "US":
        return np.full(shape, "abc", dtype=dt)
    return np.zeros(shape, dtype=dt)


def status_corpus(rng):
    out = [
        b"",
        b"null",
        b"[]",
        b'"ok"',
        b"3",
        b"true",
        b"{}",
        b'{"kind": 3}',
        b'{"kind": null, "message": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"kind": "ok", "types": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"kind": "error", "message": ' + b"9" * 5000 + b"}",
        b'{"kind": "ok", "message": NaN, "types": Infinity}',
        b'{"kind": "error", "message": "\\ud800 lone", "traceback": "\\udfff"}',
        b'{"kind": "error", "message": {"nested": ["dict"]}, "traceback": 12}',
        b"\xff\xfe{\x00}\x00",
        b"\xef\xbb\xbf" + GOOD_STATUS,
        b"x" * 250_000,
        _status(types=None),
        _status(types=["c0"]),
        _status(types={"c0": 5, "c1/out": None}),
        _status(types={"c0": "torch.Tensor"}),
        _status(types={"c0": "x._LyingTensor", "c1/out": "torch.Tensor"}),
        _status(kind="ok" * 1000),
    ]
    out += [_status(kind=k, message=m) for k in ("error", "forbidden", "exit") for m in WEIRD_TEXT]
    out += [_random_bytes(rng, rng.randrange(1, 400)) for _ in range(100)]
    out += [_flip(rng, GOOD_STATUS, rng.randrange(1, 4)) for _ in range(150)]
    return [("status", v) for v in out]


def outputs_corpus(rng):
    out = [b"", b"PK", b"PK\x03\x04" + b"\x00" * 40, GOOD_NPZ[: len(GOOD_NPZ) // 2]]
    out += [_random_bytes(rng, rng.randrange(1, 3000)) for _ in range(60)]
    out += [_flip(rng, GOOD_NPZ, rng.randrange(1, 6)) for _ in range(300)]
    for dtype in DTYPES:  # right shape, wrong dtype / container
        for key in ("c0", "c1/out"):
            arrays = dict(GOOD)
            arrays[key] = _array(rng, dtype, GOOD[key].shape)
            out.append(npz_bytes(arrays))
    for shape in [(), (3, 2), (2, 3, 1), (0,), (1,) * 33, (2,) * 20]:
        out.append(npz_bytes({**GOOD, "c0": np.zeros(shape, np.float32)}))
    for values in (np.nan, np.inf, -np.inf, 3.4e38, 1e-45, -0.0):
        out.append(npz_bytes({**GOOD, "c0": np.full((2, 3), values, np.float32)}))
    out += [
        npz_bytes({}),
        npz_bytes({"c0": _T0}),  # a missing output
        npz_bytes({**GOOD, "c2": _T1}),  # an extra one
        npz_bytes(GOOD, names=["c0", "c1/out.npy"]),
        npz_bytes(GOOD, names=["c0.npy", "c0.npy"]),
        npz_bytes(GOOD, names=["../../c0.npy", "c1/out.npy"]),
        npz_bytes(GOOD, names=["c0\x7f.npy", "c1/out.npy"]),
        npz_bytes(GOOD, names=["c0X.npy", "c1/out.npy"]).replace(b"c0X.npy", b"c0\xff.npy"),
        npz_bytes(GOOD, names=["é" * 300 + ".npy", "c1/out.npy"]),
        raw_zip([("c0.npy", b"not an array"), ("c1/out.npy", b"\x93NUMPY")]),
        raw_zip([("c0.npy", npy_header((2, 3)) + _T0.tobytes() + b"trailing")]),
        raw_zip([("readme.txt", b"hello"), ("c0.npy", npz_bytes({}))]),
        raw_zip([("c0.npy", npy_header((2, 3))), ("c1/out.npy", b"")]),  # no data
        raw_zip([("c0.npy", npy_header((10**12, 10**6)) + b"\x00" * 24)]),
        raw_zip([("c0.npy", npy_header((2, 3), version=2) + _T0.tobytes())]),
        raw_zip([("c0.npy", npy_header((2, 3), descr="|O") + b"\x80\x04N.")]),
        raw_zip([("c0.npy", b"\x93NUMPY\x03\x00" + b"\xff" * 20)]),
        raw_zip([("c0.npy", b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 70_000)]),
        raw_zip([("c0.npy", npy_header((2, 3), descr="<f4')]; import os #"))]),
        raw_zip([(f"m{i}.npy", b"") for i in range(5000)]),
        raw_zip([("c0.npy", b"\x00" * 4_000_000)]),
        raw_zip([("dir/", b""), ("c0.npy", b"")]),
    ]
    # a zip bomb: the central directory says what the member expands to, and lies
    bomb = bytearray(raw_zip([("c0.npy", npy_header((2, 3)) + b"\x00" * 24)]))
    at = bomb.index(b"PK\x01\x02") + 24
    bomb[at : at + 4] = struct.pack("<I", 0xFFFF0000)
    out.append(bytes(bomb))
    return [("outputs", v) for v in out]


def record_corpus(rng):
    values = [
        None,
        [],
        "timed_out",
        {"timed_out": "yes"},
        {"timed_out": False, "exit_code": 2**70, "signal": "SEGV"},
        {"exit_code": -1, "signal": 9},
        {"exit_code": None, "signal": 11},
        {"signal": 31},
        {"timed_out": True},
    ]
    out = [("record", json.dumps(v).encode() if v is not None else None) for v in values]
    out += [("record", _random_bytes(rng, rng.randrange(1, 200))) for _ in range(20)]
    return out


def stack_corpus(rng):
    frame = '  File "/box/student/transformer_utils.py", line {} in {}\n'
    out = [
        b"",
        b"Current thread 0x00007f (most recent call first):\n"
        + frame.format(3, "<module>").encode(),
        b"Thread 0x1 (most recent call first):\n" + frame.format(10**12, "_forward").encode(),
        b"Current thread 0x2 (most recent call first):\n"
        + frame.format(0, "\udcff").encode("utf-8", "surrogateescape"),
        ("Thread 0x3:\n" + frame.format(2, "x" * 5000)).encode(),
        ("Thread 0x4:\n" + frame.format(5, "f") * 100_000).encode(),
        b"\xff\xfe" + _random_bytes(rng, 300),
    ]
    out += [_random_bytes(rng, rng.randrange(1, 600)) for _ in range(30)]
    stages = [b"importing transformer_utils.py", b"\x00\x1b[31m" * 100, b"\xff" * 5000, b""]
    return [("timeout", (s, stages[i % len(stages)])) for i, s in enumerate(out)]


def log_corpus(rng):
    out = [
        "[sandbox   1.00s] running exercise self_attention\n" + "\x00\x1b[2J\ufffd" * 100,
        "[sandbox   1.00s] running exercise layer_norm\nprinted by the other one",
        "\udcff" * 10,
    ]
    out += [
        _random_bytes(rng, rng.randrange(1, 2000)).decode("utf-8", "replace") for _ in range(20)
    ]
    return [("log", v) for v in out]


def prediction_corpus(rng):
    lines = [str(i % 102) for i in range(40)]
    base = "".join(f"{v}\n" for v in lines).encode()
    out = [
        b"",
        b"\n",
        b"9" * 5000 + b"\n",
        b"1" * 999_000,
        b"0" * 5000 + b"1\n",
        b"-0\n",
        b"+1\n",
        b"0.0\n",
        b"1e-300\n",
        b"1e308\n",
        b"0x1\n",
        "\u0663\n".encode(),
        "²\n".encode(),
        b"\x00\n",
        b"1\r2\r3\r",
        b"\xef\xbb\xbf\xef\xbb\xbf1\n",
        b"\xff\xfe1\x00\n\x00",
        b"1\n" * 200_000,
        b" " * 100,
        b"inf\nnan\n",
        b"\r\n" * 10,
        base + b"extra\n",
        base.replace(b"\n", b"\r\n", 3),
    ]
    out += [_random_bytes(rng, rng.randrange(1, 500)) for _ in range(80)]
    out += [_flip(rng, base, rng.randrange(1, 5)) for _ in range(150)]
    out += [
        "".join(f"{rng.choice(['7', '-3', '102', '1' * rng.randrange(1, 40), ' 4'])}\n"
                for _ in range(40)).encode()
        for _ in range(30)
    ]  # fmt: skip
    return [("predictions", v) for v in out]


@functools.cache
def corpus():
    rng = random.Random(SEED)
    return (
        status_corpus(rng)
        + outputs_corpus(rng)
        + record_corpus(rng)
        + stack_corpus(rng)
        + log_corpus(rng)
        + prediction_corpus(rng)
    )


# ---------------------------------------------------------------- the items, graded
def _put(path, data):
    """Write a file anew (unlinked first: rewriting a file in place can flush on ext4)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _sandbox_result(out_dir, log="", fresh=True):
    res = sandbox.SandboxResult(out_dir=out_dir, startup={"ok": True}, log=log)
    res.records = {i: {"timed_out": False, "exit_code": 0, "signal": None} for i in IDS}
    for i in IDS if fresh else IDS[:1]:
        (out_dir / i).mkdir(parents=True, exist_ok=True)
        _put(out_dir / i / "status.json", GOOD_STATUS)
        _put(out_dir / i / "outputs.npz", GOOD_NPZ)
        for name in ("stack.txt", "stage.txt"):
            (out_dir / i / name).unlink(missing_ok=True)
    return res


def _state(res, source=""):
    return {
        "ids": IDS,
        "limits": vars(ASSIGNMENT.limits).copy(),
        "res": res,
        "error": None,
        "errors": {},
        "source": source,
        "data": {i: _exercise_data() for i in IDS},
        "points": {i: 2 for i in IDS},
    }


def _apply(kind, value, out_dir, res):
    """Put the hostile value where the sandbox would have left it, for self_attention."""
    ex = out_dir / "self_attention"
    if kind == "status":
        _put(ex / "status.json", value)
    elif kind == "outputs":
        _put(ex / "outputs.npz", value)
    elif kind == "record":
        if value is None:
            del res.records["self_attention"]
        else:
            try:
                obj = json.loads(value)
            except ValueError:
                obj = None
            res.records["self_attention"] = evidence.clean_record(obj)
            if res.records["self_attention"] is None:
                del res.records["self_attention"]
    elif kind == "timeout":
        res.records["self_attention"]["timed_out"] = True
        _put(ex / "stack.txt", value[0])
        _put(ex / "stage.txt", value[1])
    elif kind == "log":
        res.log = value


def _check_results(results):
    """Strict JSON, valid UTF-8, and a summary that prints on an ASCII console."""
    clean = normalise(results)
    text = json.dumps(clean, allow_nan=False)
    text.encode("utf-8", "strict")
    assert json.loads(text) == clean
    for t in clean["tests"]:
        assert 0 <= t["score"] <= t["max_score"]
    console = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    safe_print(grade.summary(clean), file=console)
    console.flush()


def _grade_evidence(tmp, kind, value, n):
    out_dir = tmp / "evidence"
    if out_dir.exists():  # the same folder for every value: only self_attention's is reset
        res = _sandbox_result(out_dir, fresh=False)
    else:
        res = _sandbox_result(out_dir)
    source = "x = 1\nwhile True:\n    pass\n"
    _apply(kind, value, out_dir, res)
    tests = grade.exercise_tests(_state(res, source), DECLS)
    assert [t["name"].split()[1] for t in tests] == ["SelfAttention", "LayerNorm"]
    assert tests[1]["score"] == 2, tests[1]["output"]  # the other exercise keeps its marks
    assert isinstance(tests[0]["output"], str) and tests[0]["output"]
    return {"tests": tests, "output": ""}


def _grade_predictions(tmp, value, n):
    sub = tmp / "predictions"
    sub.mkdir(exist_ok=True)
    labels = {
        "test_flower.txt": [i % 102 for i in range(40)],
        "test_pixmo.txt": [i % 20 for i in range(20)],
    }
    _put(sub / "test_flower.txt", value)
    if not (sub / "test_pixmo.txt").exists():
        (sub / "test_pixmo.txt").write_text("".join(f"{v}\n" for v in labels["test_pixmo.txt"]))
    tests, board = grade._grade_files(ASSIGNMENT, sub, labels)
    by_file = {t["name"]: t for t in tests}
    flower = next(t for n, t in by_file.items() if "test_flower" in n)
    pixmo = next(t for n, t in by_file.items() if "test_pixmo" in n)
    assert pixmo["score"] == 4 and flower["output"].startswith("test_flower.txt")
    return {"tests": tests, "output": "", "leaderboard": board}


def test_the_corpus_is_big_and_covers_every_item():
    items = corpus()
    kinds = {k for k, _ in items}
    assert kinds == {"status", "outputs", "record", "timeout", "log", "predictions"}
    assert len(items) >= 1000, len(items)


def test_every_malformed_value_is_that_items_zero_and_the_rest_still_scores(tmp_path):
    failures = []
    for n, (kind, value) in enumerate(corpus()):
        try:
            if kind == "predictions":
                results = _grade_predictions(tmp_path, value, n)
            else:
                results = _grade_evidence(tmp_path, kind, value, n)
            _check_results(results)
        except Exception as exc:  # collect them all: one line each
            failures.append(f"#{n} {kind} {value!r:.80}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures[:20])


def test_the_comparison_takes_any_array_without_the_archive_reader():
    """compare.grade_outputs on its own (the reader already refuses most of these): any
    dtype, shape or container gives (False, message), never an exception."""
    rng = random.Random(SEED)
    shapes = [(), (2, 3), (3, 2), (0,), (2, 3, 1), (4,)]
    values = [_array(rng, dtype, shape) for dtype in DTYPES for shape in shapes]
    values += [np.full((2, 3), v, np.float32) for v in (np.nan, np.inf, 3.4e38, 1e-45)]
    values += [None, "text", [[1, 2, 3]] * 2, {"c0": 1}, b"\x00"]
    for value in values:
        for key in ("c0", "c1/out"):
            outputs = {**GOOD, key: value}
            passed, message = compare.grade_outputs(
                outputs, TYPES, TARGETS, MISTAKES, 1e-5, 1e-6, None
            )
            assert isinstance(message, str) and message
            assert not passed or value is GOOD[key], (key, value)


# ---------------------------------------------------------------- the four cases
def test_a_prediction_of_thousands_of_digits_is_a_line_error(tmp_path):
    results = _grade_predictions(tmp_path, b"1\n" + b"7" * 5000 + b"\n", 0)
    flower = next(t for t in results["tests"] if "test_flower" in t["name"])
    assert flower["score"] == 0 and "line 2: a number of 5000 digits" in flower["output"]


@pytest.mark.parametrize(
    "kind, value, words",
    [
        ("outputs", npz_bytes({**GOOD, "c0": np.full((2, 3), "abc")}), "dtype <U3"),
        ("outputs", raw_zip([("notes.txt", b"x"), ("c0.npy", b"text")]), "not an array"),
        ("outputs", raw_zip([("c0.npy", b"\x93NUMPY garbage")]), "not a valid .npy"),
        ("status", _status(kind="error", message="\ud800 boom"), "\ufffd boom"),
        ("timeout", (b"Current thread 0x1:\n  File \"t/transformer_utils.py\", line 2 in "
                     b"<module>\n", b"running case 1"), "while importing transformer_utils.py"),
    ],
)  # fmt: skip
def test_hostile_evidence_gives_a_clear_line(tmp_path, kind, value, words):
    results = _grade_evidence(tmp_path, kind, value, 0)
    sa = results["tests"][0]
    assert sa["score"] == 0 and words in clean_text(sa["output"]), sa["output"]
    _check_results(results)


def test_a_time_out_names_the_running_line():
    stack = (
        "Thread 0x0002 (most recent call first):\n"
        '  File "/usr/lib/python3/threading.py", line 320 in wait\n'
        "Current thread 0x0001 (most recent call first):\n"
        '  File "/box/student/transformer_utils.py", line 3 in _spin\n'
        '  File "/box/student/transformer_utils.py", line 5 in <module>\n'
        '  File "<frozen importlib._bootstrap>", line 241 in _call_with_frames_removed\n'
    )
    source = "import torch\ndef _spin():\n    while True: pass\n\n_spin()\n"
    where, importing = evidence.running_line(stack, source)
    assert importing and where == "transformer_utils.py:3 in _spin:  while True: pass"


class _Recorder:
    """A stand-in sandbox: the evidence is prepared in a folder, nothing runs."""

    def __init__(self, monkeypatch, tmp_path, prepare):
        self.out_dir = tmp_path / "box-out"
        self.prepare = prepare
        caps = sandbox.Capabilities(root=True, namespaces=True)
        monkeypatch.setattr(sandbox, "require_sandbox", lambda *a, **k: caps)
        monkeypatch.setattr(sandbox, "start_sandbox", self.start)
        monkeypatch.setattr(sandbox, "finish_sandbox", lambda res: res)
        monkeypatch.setattr(sandbox, "cleanup", lambda res: None)
        monkeypatch.setattr(grade.data, "load_exercise", lambda *a, **k: _exercise_data())

    def start(self, exercises, *args, **kwargs):
        res = _sandbox_result(self.out_dir, log="[sandbox 0.1s] running exercise layer_norm\n")
        res.probe = {"uid": 65534, "readable": [], "writable": [], "exec_refused": True}
        self.prepare(res, self.out_dir)
        return res


def _upload(tmp_path, flower=None):
    labels, sub = tmp_path / "labels", tmp_path / "sub"
    labels.mkdir()
    sub.mkdir()
    (labels / "test_flower.txt").write_text("".join(f"{i % 102}\n" for i in range(40)))
    (labels / "test_pixmo.txt").write_text("".join(f"{i % 20}\n" for i in range(20)))
    for name in ("test_flower.txt", "test_pixmo.txt"):
        (sub / name).write_bytes((labels / name).read_bytes())
    if flower is not None:
        (sub / "test_flower.txt").write_bytes(flower)
    (sub / "transformer_utils.py").write_text("x = 1\n")
    for name in ("script_q2.py", "script_q3.py"):
        (sub / name).write_text("print('train')\n")
    return sub, labels


def test_end_to_end_the_four_failures_leave_a_complete_valid_results_file(tmp_path, monkeypatch):
    """The four failures of the issue in one upload: results.json complete, strict JSON in
    valid UTF-8; the summary prints on an ASCII console; every other part scores."""

    def prepare(res, out_dir):
        sa, ln = out_dir / "self_attention", out_dir / "layer_norm"
        (sa / "status.json").write_bytes(_status(kind="error", message="\ud800 \x00 \x1b[2J"))
        (ln / "outputs.npz").write_bytes(npz_bytes({**GOOD, "c0": np.full((2, 3), "a")}))

    _Recorder(monkeypatch, tmp_path, prepare)
    sub, labels = _upload(tmp_path, flower=b"1\n" + b"9" * 10_000 + b"\n")
    console = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr("sys.stdout", console)
    res = grade.grade(sub, tmp_path / "results.json", labels, grade.GradeOptions())
    raw = (tmp_path / "results.json").read_bytes()
    data = json.loads(raw.decode("utf-8", "strict"), parse_constant=pytest.fail)
    assert data == res and len(data["tests"]) == 6
    scores = {t["name"].split(" (")[0]: t["score"] for t in data["tests"]}
    assert scores == {
        "1.1 SelfAttention": 0, "1.2 LayerNorm": 0, "Flower test accuracy": 0,
        "script_q2.py present": 0, "PixMo test accuracy": 4, "script_q3.py present": 0,
    }  # fmt: skip
    assert "\\ud800" not in raw.decode() and "\ufffd" in data["tests"][0]["output"]
    assert "dtype <U1" in data["tests"][1]["output"]
    console.flush()
    assert b"Total: 4/12" in console.buffer.getvalue()


def test_a_crash_while_grading_one_item_costs_only_that_item(tmp_path, monkeypatch):
    _Recorder(monkeypatch, tmp_path, lambda res, out_dir: None)
    real = compare.grade_outputs

    def flaky(outputs, types, targets, *args):
        if "c1/out" in outputs and outputs["c1/out"].size == 4 and flaky.calls == 0:
            flaky.calls += 1
            raise ZeroDivisionError("a bug in the grader")
        return real(outputs, types, targets, *args)

    flaky.calls = 0
    monkeypatch.setattr(grade.compare, "grade_outputs", flaky)
    real_predictions = grade.grade_predictions

    def broken(path, labels, part):
        if part.file == "test_pixmo.txt":
            raise MemoryError("a bug in the grader")
        return real_predictions(path, labels, part)

    monkeypatch.setattr(grade, "grade_predictions", broken)
    monkeypatch.setattr(grade, "describe_protections", lambda *a: 1 / 0)
    sub, labels = _upload(tmp_path)
    res = grade.grade(sub, tmp_path / "results.json", labels, grade.GradeOptions(quiet=True))
    scores = [t["score"] for t in res["tests"]]
    assert scores == [0, 2, 4, 0, 0, 0], res["tests"]
    assert "ZeroDivisionError: a bug in the grader" in res["tests"][0]["output"]
    assert "could not be graded" in res["tests"][4]["output"]
    assert "protections: could not be listed" in res["output"]


def test_results_are_strict_json_whatever_the_text(tmp_path):
    hostile = "".join(chr(c) for c in range(0, 0x3000, 7)) + "\ud800\udfff\U0010ffff"
    path = write_results(
        tmp_path / "results.json",
        {"tests": [{"name": hostile, "score": "nan", "max_score": None, "output": hostile}],
         "output": hostile, "leaderboard": [{"name": hostile, "value": float("inf")}, "x"]},
    )  # fmt: skip
    data = json.loads(path.read_bytes().decode("utf-8", "strict"), parse_constant=pytest.fail)
    assert data["tests"][0]["score"] == 0.0 and data["leaderboard"][0]["value"] == 0.0
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in data["output"])
