"""The sandbox's rules that hold in every thread and process student code starts, in ONE
sandbox run (fast tier): an assignment of six exercises, each attacked another way.

* the forbidden-op rule: ``F.scaled_dot_product_attention`` from a ``threading.Thread``
  (SelfAttention), ``F.layer_norm`` from a thread pool (LayerNorm), torch's attention from a
  fresh Python started with ``subprocess`` (MultiHeadAttention: starting programs is refused),
  ``F.layer_norm`` in a ``multiprocessing`` worker forked by the exercise
  (DifferentialAttention), ``F.conv2d`` at import time (CustomConv2d);
* each exercise starts clean: every exercise process, at import, fails if it finds a file
  that an earlier exercise wrote in /tmp, /dev/shm or the home folder's cache, then writes
  them; and it fails if the sandbox's job description (the file or the supervisor's memory
  that it inherits) shows a host path;
* one bad part never costs the others: the positional encoding (no attack) gets full marks.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from autograder.grade import GradeOptions, grade

ROOT = Path(__file__).resolve().parents[1]
N_FLOWER, N_PIXMO = 40, 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI: root)")

EXERCISES = {  # exercise id -> what its feedback must say (score 0), or None (full marks)
    "self_attention": "forbidden",
    "layer_norm": "forbidden",
    "multi_head_attention": "may not start other programs",
    "differential_attention": "forbidden",
    "conv2d": "forbidden",
    "positional_encoding": None,
}

ATTACK = """
# ---- every exercise process: clean start, no host path in the job description ----
import concurrent.futures as _futures
import multiprocessing as _mp
import os as _os
import subprocess as _subprocess
import sys as _sys
import threading as _threading

_MARKS = ("/tmp/left-behind", "/dev/shm/left-behind", _os.path.expanduser("~/.cache/left"))
_seen = [p for p in _MARKS if _os.path.exists(p)]
if _seen:
    raise RuntimeError(f"LEFTOVER from an earlier exercise: {_seen}")
for _p in _MARKS:
    _os.makedirs(_os.path.dirname(_p), exist_ok=True)
    open(_p, "w").write("x")
_job = repr(getattr(_sys.modules["__main__"], "JOB", ""))
if _os.path.exists("/box/job.json"):
    _job += open("/box/job.json").read()
for _host in ("@KIT@", "@LABELS@", "@RESULTS@", "@SUBMISSION@", "@HIDDEN@"):
    if _host in _job:
        raise RuntimeError(f"HOSTPATH {_host} in the job description")

# ---- CustomConv2d: torch's conv2d at import time ----
if _os.path.basename(_os.getcwd()) == "conv2d":
    F.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))


# ---- SelfAttention: torch's attention in a thread ----
def _sa_forward(self, x):
    q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
    box = {}

    def work():
        try:
            box["out"] = F.scaled_dot_product_attention(q, k, v)
        except Exception:  # hide the refusal: the rule must hold anyway
            box["out"] = torch.zeros_like(v)

    t = _threading.Thread(target=work)
    t.start()
    t.join()
    return box["out"]


SelfAttention.forward = _sa_forward


# ---- LayerNorm: torch's layer_norm in a thread pool ----
def _ln_forward(self, x):
    with _futures.ThreadPoolExecutor(2) as pool:
        return pool.submit(F.layer_norm, x, x.shape[-1:], self.w, self.b, self.eps).result()


LayerNorm.forward = _ln_forward


# ---- MultiHeadAttention: torch's attention in a fresh Python ----
def _mha_forward(self, query, key, value, attn_mask=None, return_attention=False):
    code = "import torch, torch.nn.functional as F; F.scaled_dot_product_attention(*[torch.ones(1, 2, 4)] * 3)"
    _subprocess.run([_sys.executable, "-c", code], check=True, capture_output=True)
    raise RuntimeError("the subprocess ran")


MultiHeadAttention.forward = _mha_forward


# ---- DifferentialAttention: torch's layer_norm in a forked multiprocessing worker ----
def _norm(t):
    return F.layer_norm(t, t.shape[-1:])


def _diff_forward(self, x, attn_mask=None, return_attention=False):
    with _mp.get_context("fork").Pool(1) as pool:
        pool.apply(_norm, (x,))
    raise RuntimeError("the forked worker ran layer_norm")


DifferentialAttention.forward = _diff_forward
"""


def test_rules_hold_in_threads_processes_and_at_import(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "test_flower.txt").write_text("".join(f"{i % 102}\n" for i in range(N_FLOWER)))
    (labels / "test_pixmo.txt").write_text("".join(f"{i % 20}\n" for i in range(N_PIXMO)))
    spec = yaml.safe_load((ROOT / "instructor" / "assignments" / "cs444_mp3.yml").read_text())
    spec["student_exercises"] = list(EXERCISES)
    spec["practice_exercises"] = "rest"
    spec["points"] = {i: 1 for i in EXERCISES}
    (tmp_path / "assignment.yml").write_text(yaml.safe_dump(spec))
    sub, results = tmp_path / "sub", tmp_path / "results.json"
    sub.mkdir()
    attack = ATTACK
    for key, value in (
        ("@KIT@", ROOT),
        ("@LABELS@", labels),
        ("@RESULTS@", results),
        ("@SUBMISSION@", sub),
        ("@HIDDEN@", ROOT / "autograder" / "reference_data"),
    ):
        attack = attack.replace(key, str(value))
    (sub / "transformer_utils.py").write_text((ROOT / "transformer_utils.py").read_text() + attack)
    for name in ("test_flower.txt", "test_pixmo.txt"):
        shutil.copyfile(labels / name, sub / name)
    for name in ("script_q2.py", "script_q3.py"):
        (sub / name).write_text("print('train')\n")
    opts = GradeOptions(assignment=str(tmp_path / "assignment.yml"), timeout_s=20, quiet=True)
    res = grade(sub, results, labels, opts)
    assert json.loads(results.read_text())["tests"] == res["tests"]
    by_id = {t["name"].rsplit("(", 1)[1].rstrip(")"): t for t in res["tests"] if "(" in t["name"]}
    for ex_id, needle in EXERCISES.items():
        test = by_id[ex_id]
        assert "LEFTOVER" not in test["output"] and "HOSTPATH" not in test["output"], test
        if needle is None:
            assert test["score"] == test["max_score"] == 1, test["output"]
        else:
            assert test["score"] == 0 and needle in test["output"], (ex_id, test["output"])
    assert "cannot start other programs (seccomp) [active]" in res["output"]
    assert "mount namespace of its own" in res["output"]
    assert res["score"] == 1 + 8  # the control exercise and both prediction files


LAZY_IMPORT = """

# ---- SelfAttention: a module imported only while the exercise runs ----
_original_forward = SelfAttention.forward


def _lazy_forward(self, x):
    import lazy_probe  # lives in the venv's site-packages, under /tmp

    return _original_forward(self, x) * lazy_probe.ONE


SelfAttention.forward = _lazy_forward
"""


def test_a_python_installation_under_tmp_stays_visible_to_each_exercise(tmp_path):
    """Each exercise gets a fresh /tmp; a venv under /tmp (pytest's tmp_path is there) must
    still be whole in it, so a module first imported while the exercise runs is found."""
    import subprocess
    import sys
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert site.startswith("/tmp/"), site
    # torch and the rest come from this interpreter's packages; the probe lives under /tmp
    (Path(site) / "kit_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (Path(site) / "lazy_probe.py").write_text("ONE = 1.0\n")
    spec = yaml.safe_load((ROOT / "instructor" / "assignments" / "cs444_mp3.yml").read_text())
    spec.update(student_exercises=["self_attention"], practice_exercises="rest",
                points={"self_attention": 1}, predictions=[], required_files=[])  # fmt: skip
    (tmp_path / "assignment.yml").write_text(yaml.safe_dump(spec))
    sub, results = tmp_path / "sub", tmp_path / "results.json"
    sub.mkdir()
    source = (ROOT / "transformer_utils.py").read_text() + LAZY_IMPORT
    (sub / "transformer_utils.py").write_text(source)
    command = [python, "-m", "autograder", "grade", str(sub), "--results", str(results),
               "--assignment", str(tmp_path / "assignment.yml")]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    tests = json.loads(results.read_text())["tests"]
    assert [t["score"] for t in tests] == [1], (proc.stdout[-2000:], tests)
    assert "mount namespace of its own" in json.loads(results.read_text())["output"]
