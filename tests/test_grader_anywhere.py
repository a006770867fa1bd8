"""The grader wherever it is installed, with or without root (issue 10, section 1).

* the README's grading command, verbatim, with the kit, its virtualenv, the upload, the labels
  and the results file all under /tmp (the venv inside the kit's folder): full marks;
* a teaching assistant without root, with an ordinary PATH (no /usr/sbin), the kit and its
  venv in their home folder, grading through ``autograder/grade_array.sbatch``: full marks
  with the user-namespace protections, and hostile uploads still defeated;
* the probe judges protected paths as the sandbox sees them: a Python installation left
  writable, or a protected file inside a bound folder without its cover, is refused;
* without namespaces and without root, one line names the kernel setting that is missing.

The located environments are the running one, bound (in a private mount namespace, as root)
at the new place, so the tests need no download and no copy of torch.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from autograder import data, sandbox
from autograder.assignment import SandboxLimits
from autograder.grade import GradeOptions, grade

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "tests" / "submissions"
KIT_PARTS = ("autograder", "instructor", "test_functions.py", "transformer_utils.py")
ORDINARY_PATH = "/usr/local/bin:/usr/bin:/bin"  # what an ordinary user has: no /usr/sbin
N_FLOWER, N_PIXMO = 100, 50

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="sets up other users and mount namespaces (CI runs as root)"
)


def _can_unshare():
    unshare = sandbox.tool("unshare")
    return bool(unshare) and subprocess.run([unshare, "--mount", "true"]).returncode == 0


# ---------------------------------------------------------------- building uploads


def _copy_kit(dest):
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in KIT_PARTS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def _write_labels(folder):
    folder.mkdir(parents=True)
    flower = [(7 * i) % 102 for i in range(N_FLOWER)]
    pixmo = [(3 * i) % 20 for i in range(N_PIXMO)]
    (folder / "test_flower.txt").write_text("".join(f"{v}\n" for v in flower))
    (folder / "test_pixmo.txt").write_text("".join(f"{v}\n" for v in pixmo))


def _upload(folder, labels, case=None, paths=None):
    """The reference solution with ``tests/submissions/<case>.py`` appended (placeholders
    filled with ``paths``), the true labels as predictions (all zeros where the case asks)."""
    folder.mkdir(parents=True)
    source = (ROOT / "transformer_utils.py").read_text()
    if case:
        attack = (SUBMISSIONS / f"{case}.py").read_text()
        for key, value in (paths or {}).items():
            attack = attack.replace(key, value)
        source += "\n\n# ---- adversarial case ----\n" + attack
    (folder / "transformer_utils.py").write_text(source)
    for name in ("test_flower.txt", "test_pixmo.txt"):
        shutil.copyfile(labels / name, folder / name)
    if case == "read_labels_rewrite_predictions":
        lines = (labels / "test_flower.txt").read_text().count("\n")
        (folder / "test_flower.txt").write_text("0\n" * lines)
    for name in ("script_q2.py", "script_q3.py"):
        (folder / name).write_text("print('my training script')\n")


def _part(results, words):
    return next(t for t in results["tests"] if words in t["name"])


# ---------------------------------------------------------------- no sandbox needed


def test_system_tools_are_found_without_sbin_on_path(monkeypatch):
    if not any(os.path.exists(f"{d}/chroot") for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")):
        pytest.skip("chroot is not installed here")
    monkeypatch.setenv("PATH", "/nonexistent")
    for name in ("unshare", "chroot", "mount"):
        path = sandbox.tool(name)
        assert path and os.path.isabs(path) and os.access(path, os.X_OK), name
    assert sandbox.tool("no-such-tool-here") is None


@pytest.mark.parametrize(
    "setting, value, expected",
    [
        ("kernel/unprivileged_userns_clone", "0", ("kernel.unprivileged_userns_clone=0", "1")),
        ("user/max_user_namespaces", "0", ("user.max_user_namespaces=0", "a positive number")),
        ("kernel/apparmor_restrict_unprivileged_userns", "1",
         ("kernel.apparmor_restrict_unprivileged_userns=1", "0")),
        ("user/max_user_namespaces", "15000", None),
    ],
)  # fmt: skip
def test_the_kernel_setting_that_forbids_user_namespaces_is_named(tmp_path, setting, value,
                                                                  expected):  # fmt: skip
    (tmp_path / setting).parent.mkdir(parents=True)
    (tmp_path / setting).write_text(value + "\n")
    found = sandbox.userns_blocker(tmp_path)
    if expected is None:
        assert found is None
    else:
        assert found[0] == expected[0] and found[1].startswith(expected[1])


def test_without_namespaces_and_root_one_line_names_the_setting(tmp_path, monkeypatch, capsys):
    caps = sandbox.Capabilities(
        root=False, namespaces=False, blocker=("kernel.unprivileged_userns_clone=0", "1"),
        reason="the kernel setting kernel.unprivileged_userns_clone=0 forbids user namespaces",
    )  # fmt: skip
    monkeypatch.setattr(sandbox, "detect", lambda *args: caps)
    labels = tmp_path / "labels"
    _write_labels(labels)
    _upload(tmp_path / "subs" / "ann", labels)
    res = grade(tmp_path / "subs" / "ann", tmp_path / "results.json", labels,
                GradeOptions(quiet=True))  # fmt: skip
    assert res["tests"] == []  # nothing graded, no false zeros
    line = res["output"]
    assert "\n" not in line and "refusing to run student code" in line
    assert "kernel.unprivileged_userns_clone=0" in line
    assert "set kernel.unprivileged_userns_clone to 1" in line
    assert json.loads((tmp_path / "results.json").read_text())["output"] == line
    from autograder.__main__ import main

    status = main(["grade-all", str(tmp_path / "subs"), "--labels", str(labels),
                   "--csv", str(tmp_path / "g.csv")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "kernel.unprivileged_userns_clone=0" in err[0]
    assert not (tmp_path / "g.csv").exists()


# ---------------------------------------------------------------- the probe, as the sandbox sees


def _probe_only(protected, unwritable=(), force_userns=False):
    """Start a sandbox with no exercise and stop it once the probe has reported."""
    res = sandbox.start_sandbox([], b"", {"test_functions.py": b""}, {}, SandboxLimits(),
                                protected, unwritable, force_userns=force_userns)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"] probe " not in res.reader.kept and time.monotonic() < deadline:
            if res.proc.poll() is not None:
                break
            time.sleep(0.05)
        os.killpg(res.proc.pid, 9)
        sandbox.finish_sandbox(res)
    finally:
        sandbox.cleanup(res)
    assert res.probe, res.log
    return res.probe


@needs_root
def test_python_installation_left_writable_is_refused(monkeypatch):
    """In the user-namespace mode student code owns the grader's files; only the read-only
    bind keeps it from rewriting the Python installation the grader imports next time."""
    if not sandbox.detect(True, True).namespaces:
        pytest.skip(f"no user namespaces here: {sandbox.detect(True, True).reason}")
    env_dirs = sandbox.interpreter_dirs()
    assert _probe_only([], force_userns=True)["writable"] == []
    without_ro = "\n".join(
        line for line in sandbox._NS_SCRIPT.splitlines() if "remount,bind,ro" not in line
    )
    monkeypatch.setattr(sandbox, "_NS_SCRIPT", without_ro)
    writable = _probe_only([], force_userns=True)["writable"]
    assert writable and set(writable) <= set(env_dirs), writable


@needs_root
def test_protected_files_inside_a_bound_folder_are_covered(tmp_path, monkeypatch):
    """Labels kept inside a folder of the Python installation: covered by an empty mount in
    the sandbox; without the cover, the probe finds them and grading would refuse."""
    if not sandbox.detect(True, False).namespaces:
        pytest.skip(f"no namespaces here: {sandbox.detect(True, False).reason}")
    env = tmp_path / "env"
    _write_labels(env / "labels")
    (env / "lib").mkdir()
    real = sandbox.interpreter_dirs
    monkeypatch.setattr(
        sandbox, "interpreter_dirs", lambda protected=(): [*real(protected), str(env)]
    )
    secret = [str(env / "labels"), str(env / "labels" / "test_flower.txt")]
    assert _probe_only(secret)["readable"] == []
    monkeypatch.setattr(sandbox, "_masks", lambda protected, bound: [])
    assert set(_probe_only(secret)["readable"]) == set(secret)


# ---------------------------------------------------------------- located installations


def _env_parts():
    """(prefix of the running environment, interpreter relative to it) or a skip."""
    prefix = os.path.realpath(sys.prefix)
    exe = os.path.abspath(sys.executable)
    if not exe.startswith(sys.prefix.rstrip("/") + "/"):
        pytest.skip(f"the interpreter {exe} is not inside its prefix {sys.prefix}")
    return prefix, os.path.relpath(exe, sys.prefix)


@needs_root
def test_readme_command_with_everything_under_tmp():
    """`python -m autograder grade upload --results /tmp/results.json --labels labels`, run
    from a kit under /tmp whose venv is its own .venv folder (also under /tmp)."""
    if not _can_unshare():
        pytest.skip("cannot create a mount namespace here")
    prefix, exe = _env_parts()
    base = Path(tempfile.mkdtemp(prefix="ag-anywhere-", dir="/tmp"))
    results = Path(f"/tmp/results-{uuid.uuid4().hex[:12]}.json")
    try:
        kit = base / "kit"
        _copy_kit(kit)
        venv = kit / ".venv"
        venv.mkdir()
        _write_labels(kit / "labels")
        _upload(kit / "upload", kit / "labels")
        if data.cache_dir().is_dir():  # skip preparing the hidden data again (torch import)
            shutil.copytree(data.cache_dir(), base / ".cache" / "course-kit-autograder")
        script = (
            'mount --bind "$1" "$2" && cd "$3" && "$2/$4" -c "import sys, importlib.util as u; '
            "print(sys.prefix); print(u.find_spec('torch').origin)\" && "
            'exec "$2/$4" -m autograder grade upload --results "$5" --labels labels'
        )
        proc = subprocess.run(
            [sandbox.tool("unshare"), "--mount", "--propagation", "private", "sh", "-c", script,
             "sh", prefix, str(venv), str(kit), exe, str(results)],
            env={"PATH": ORDINARY_PATH, "HOME": str(base), "LANG": "C.UTF-8"},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        where = proc.stdout.splitlines()[:2]
        assert where[0] == str(venv) and where[1].startswith(str(venv)), where  # really /tmp
        res = json.loads(results.read_text())
    finally:
        shutil.rmtree(base, ignore_errors=True)
        results.unlink(missing_ok=True)
    assert _part(res, "SelfAttention")["score"] == 2, res["output"]
    assert _part(res, "LayerNorm")["score"] == 2
    assert res["score"] == 12
    assert "mount namespace with a minimal read-only root" in res["output"]
    assert "verified by probe" in res["output"]


def _free_uid():
    used = {p.pw_uid for p in pwd.getpwall()}
    owners = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                owners.add(os.stat(f"/proc/{pid}").st_uid)
            except OSError:
                pass
    return next(u for u in range(23456, 30000) if u not in used and u not in owners)


HOSTILE = ["read_labels_rewrite_predictions", "forge_results_direct"]


@needs_root
def test_teaching_assistant_grades_without_root_from_their_home():
    """An ordinary user (no passwd entry needed), ordinary PATH, kit and venv in their home,
    grading through the Slurm array script outside Slurm: the user-namespace sandbox grades
    the reference solution fully and still defeats hostile uploads."""
    setpriv = sandbox.tool("setpriv")
    if not setpriv or not _can_unshare():
        pytest.skip("needs setpriv and unshare (util-linux) to act as another user")
    uid = _free_uid()
    as_ta = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    base = Path(tempfile.mkdtemp(prefix="ag-ta-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        home = base / "home" / "ta"
        kit = home / "kit"
        _copy_kit(kit)
        _write_labels(home / "labels")
        subs, out = home / "submissions", home / "graded"
        _upload(subs / "correct", home / "labels")
        for case in HOSTILE:
            paths = {"@RESULTS@": str(out / "results" / case / "results.json"),
                     "@LABELS@": str(home / "labels"), "@SUBMISSION@": str(subs / case),
                     "@KIT@": str(kit), "@HIDDEN@": str(kit / "autograder" / "reference_data")}  # fmt: skip
            _upload(subs / case, home / "labels", case, paths)
        if data.cache_dir().is_dir():  # skip preparing the hidden data again
            shutil.copytree(data.cache_dir(), home / ".cache" / "course-kit-autograder")
        (home / "python").mkdir()
        (kit / ".venv").mkdir()
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(base / "home")], check=True)
        os.chmod(home, 0o700)
        # Python for the TA: the base interpreter if they may run it, else its installation
        # bound into their home (as a pyenv or conda there would be).
        base_exe = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        base_prefix = os.path.realpath(sys.base_prefix)
        # (a binary whose libpython the user cannot read may still start, with another one)
        same = "import sys; print(sys.version, sys.base_prefix)"
        reachable = subprocess.run([*as_ta, base_exe, "-c", same], capture_output=True, text=True)
        python = base_exe
        if reachable.stdout.strip() != f"{sys.version} {sys.base_prefix}":
            python = str(home / "python" / os.path.relpath(base_exe, base_prefix))
        torch_parent = sandbox._package_parents()[0]
        version = sysconfig.get_python_version()
        site = kit / ".venv" / "lib" / f"python{version}" / "site-packages"
        env = {"HOME": str(home), "PATH": ORDINARY_PATH, "LANG": "C.UTF-8", "USER": "ta",
               "VIRTUAL_ENV": str(kit / ".venv"), "SUBMISSIONS": str(subs),
               "LABELS": str(home / "labels"), "OUT": str(out), "SLURM_ARRAY_TASK_ID": "0",
               "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_CPUS_PER_TASK": "3"}  # fmt: skip
        script = f"""set -e
{"" if python == base_exe else f'mount --bind "{base_prefix}" "{home}/python"'}
{" ".join(as_ta)} "{python}" -m venv --without-pip "{kit}/.venv" || exit 77
mount --bind "{torch_parent}" "{site}"
cd "{kit}"
exec {" ".join(as_ta)} env -i {" ".join(f'{k}="{v}"' for k, v in env.items())} \\
  bash autograder/grade_array.sbatch
"""
        start = time.monotonic()
        proc = subprocess.run([sandbox.tool("unshare"), "--mount", "--propagation", "private",
                               "bash", "-c", script], capture_output=True, text=True, timeout=400)  # fmt: skip
        elapsed = time.monotonic() - start
        if proc.returncode == 77:
            pytest.skip(f"the user {uid} cannot run this Python: {proc.stderr[-500:]}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _owner(p) == uid]
        results = {
            name: (out / "results" / name / "results.json").read_text()
            for name in ["correct", *HOSTILE]
        }
        upload_flower = (subs / HOSTILE[0] / "test_flower.txt").read_text()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert leftovers == []
    correct = json.loads(results["correct"])
    assert _part(correct, "SelfAttention")["score"] == 2, correct["output"]
    assert _part(correct, "LayerNorm")["score"] == 2
    assert correct["score"] == 12
    assert "user namespace (no root needed)" in correct["output"]
    assert "verified by probe" in correct["output"]
    assert "FORGED" not in results["forge_results_direct"]
    assert json.loads(results["forge_results_direct"])["score"] == 12
    rewrite = json.loads(results["read_labels_rewrite_predictions"])
    assert _part(rewrite, "test_flower.txt")["score"] == 0  # graded on the upload as sent
    assert set(upload_flower.split()) == {"0"}, "the sandbox rewrote the upload"
    print(f"graded 3 uploads as uid {uid} in {elapsed:.1f} s")


def _owner(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
