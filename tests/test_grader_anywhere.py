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
KIT_PARTS = ("autograder", "instructor", "kit", "test_functions.py", "transformer_utils.py")
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


@pytest.mark.slow
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

# Run a command (as root) in a new user namespace mapping uids 0-65535 to themselves, whose
# user.max_user_namespaces is 0: what a cluster that forbids user namespaces looks like to the
# ordinary user the command then becomes (through setpriv).
NO_USERNS = r"""
import ctypes, os, sys
go_r, go_w = os.pipe()
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    ok = ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0  # CLONE_NEWUSER
    os.write(ready_w, b"1" if ok else b"0")
    if not ok or os.read(go_r, 1) != b"1":
        os._exit(77)
    with open("/proc/sys/user/max_user_namespaces", "w") as fh:
        fh.write("0")
    os.execv(sys.argv[1], sys.argv[1:])
ok = os.read(ready_r, 1) == b"1"
try:
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as fh:
            fh.write("0 0 65536\n")
except OSError:
    ok = False
os.write(go_w, b"1" if ok else b"0")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


class TA:
    """A teaching assistant's account without root: a uid with no passwd entry, a home under
    /tmp holding the kit and its .venv, and an ordinary PATH. Their Python is the base
    interpreter if they may run it, else its installation bound into their home (as a pyenv
    or conda there would be); the running environment's site-packages is bound into the
    .venv. ``run(command)`` runs a shell command as them in a private mount namespace."""

    def __init__(self, base):
        self.setpriv = sandbox.tool("setpriv")
        if not self.setpriv or not _can_unshare():
            pytest.skip("needs setpriv and unshare (util-linux) to act as another user")
        self.uid = _free_uid()
        self.as_ta = [self.setpriv, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
        self.base, self.home = base, base / "home" / "ta"
        self.kit = self.home / "kit"
        os.chmod(base, 0o755)
        _copy_kit(self.kit)
        _write_labels(self.home / "labels")
        if data.cache_dir().is_dir():  # skip preparing the hidden data again (torch import)
            shutil.copytree(data.cache_dir(), self.home / ".cache" / "course-kit-autograder")
        (self.home / "python").mkdir()
        (self.kit / ".venv").mkdir()
        self.env = {"HOME": str(self.home), "PATH": ORDINARY_PATH, "LANG": "C.UTF-8",
                    "USER": "ta", "VIRTUAL_ENV": str(self.kit / ".venv")}  # fmt: skip

    def run(self, command, env=(), wrap=""):
        subprocess.run(["chown", "-R", f"{self.uid}:{self.uid}", str(self.home)], check=True)
        os.chmod(self.home, 0o700)
        base_exe = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        base_prefix = os.path.realpath(sys.base_prefix)
        # (a binary whose libpython the user cannot read may still start, with another one)
        same = "import sys; print(sys.version, sys.base_prefix)"
        reach = subprocess.run([*self.as_ta, base_exe, "-c", same], capture_output=True, text=True)
        python = base_exe
        if reach.stdout.strip() != f"{sys.version} {sys.base_prefix}":
            python = str(self.home / "python" / os.path.relpath(base_exe, base_prefix))
        site = self.kit / ".venv" / "lib" / f"python{sysconfig.get_python_version()}"
        variables = " ".join(f'{k}="{v}"' for k, v in {**self.env, **dict(env)}.items())
        as_ta = " ".join(self.as_ta)
        script = f"""set -e
{"" if python == base_exe else f'mount --bind "{base_prefix}" "{self.home}/python"'}
{as_ta} "{python}" -m venv --without-pip "{self.kit}/.venv" || exit 77
mount --bind "{sandbox._package_parents()[0]}" "{site}/site-packages"
cd "{self.kit}"
exec {wrap} {as_ta} env -i {variables} {command}
"""
        proc = subprocess.run([sandbox.tool("unshare"), "--mount", "--propagation", "private",
                               "bash", "-c", script], capture_output=True, text=True, timeout=400)  # fmt: skip
        if proc.returncode == 77:
            pytest.skip(f"the user {self.uid} cannot run this Python: {proc.stderr[-500:]}")
        return proc


@pytest.mark.slow
@needs_root
def test_teaching_assistant_grades_without_root_from_their_home():
    """An ordinary user, ordinary PATH, kit and venv in their home, grading through the Slurm
    array script outside Slurm (the python on PATH has no torch: the job must pick the venv's):
    the user-namespace sandbox grades the reference solution fully and still defeats hostile
    uploads."""
    base = Path(tempfile.mkdtemp(prefix="ag-ta-", dir="/tmp"))
    try:
        ta = TA(base)
        subs, out, labels = ta.home / "submissions", ta.home / "graded", ta.home / "labels"
        _upload(subs / "correct", labels)
        for case in HOSTILE:
            paths = {"@RESULTS@": str(out / "results" / case / "results.json"),
                     "@LABELS@": str(labels), "@SUBMISSION@": str(subs / case),
                     "@KIT@": str(ta.kit), "@HIDDEN@": str(ta.kit / "autograder" / "reference_data")}  # fmt: skip
            _upload(subs / case, labels, case, paths)
        job = {"SUBMISSIONS": subs, "LABELS": labels, "OUT": out, "SLURM_ARRAY_TASK_ID": 0,
               "SLURM_ARRAY_TASK_COUNT": 1, "SLURM_CPUS_PER_TASK": 3}  # fmt: skip
        start = time.monotonic()
        proc = ta.run("bash autograder/grade_array.sbatch", env=job)
        elapsed = time.monotonic() - start
        refusal = [line for line in proc.stderr.splitlines() if "refusing to run" in line]
        if proc.returncode == 2 and refusal:  # the right answer where the kernel forbids userns
            pytest.skip(f"user namespaces are forbidden here; the grader says: {refusal[0]}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _owner(p) == ta.uid]
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
    print(f"graded 3 uploads as uid {ta.uid} in {elapsed:.1f} s")


@needs_root
def test_teaching_assistant_is_told_the_kernel_setting_that_is_missing():
    """The same account on a machine whose kernel forbids user namespaces: the README's
    command refuses in one line that names the setting, and grades nothing."""
    base = Path(tempfile.mkdtemp(prefix="ag-ta-", dir="/tmp"))
    try:
        ta = TA(base)
        _upload(ta.kit / "upload", ta.home / "labels")
        helper = base / "no_userns.py"
        helper.write_text(NO_USERNS)
        proc = ta.run("python -m autograder grade upload --results results.json --labels ../labels",
                      env={"PATH": f"{ta.kit}/.venv/bin:{ORDINARY_PATH}"},
                      wrap=f"{sys.executable} {helper}")  # fmt: skip
        if proc.returncode == 77:  # (TA.run skips itself when the venv fails)
            pytest.skip(f"cannot make a user namespace to restrict: {proc.stderr[-300:]}")
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        res = json.loads((ta.kit / "results.json").read_text())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert res["tests"] == [] and "\n" not in res["output"]
    assert "refusing to run student code" in res["output"]
    assert "user.max_user_namespaces=0" in res["output"]
    assert "set user.max_user_namespaces to a positive number" in res["output"]


def _owner(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
