"""Run student code in a sandbox child process and collect its (untrusted) outputs.

Layers, strongest first (each is reported by :func:`describe`):

* **namespaces + minimal root** (root with ``unshare``; this machine): fresh mount, PID,
  network, IPC and UTS namespaces. The child's root file system is a tmpfs holding only
  read-only binds of the system directories (/usr, /etc, ...), the Python installation, and
  the sandbox's own box directory: the repository, the hidden data, the labels, the results
  directory and /root simply do not exist in there. The PID namespace dies with the
  supervisor, taking leftovers with it; the network namespace has no interfaces.
* **privilege drop** (grader running as root, e.g. Gradescope): every exercise process runs as
  an unprivileged user with no supplementary groups and ``no_new_privs``; a probe run as
  that user before any student code checks that the protected paths are unreadable and the
  results file unwritable; if not, grading refuses to run student code (``--insecure``
  overrides, for local experiments only).
* **always**: rlimits on CPU seconds, address space, processes and file size; a wall-clock
  timeout; the whole process group and every process of the sandbox user killed afterwards;
  a clean environment; stdin from /dev/null; stdout/stderr captured and capped; outputs
  returned as ``.npz`` read with ``allow_pickle=False``.
"""

import fcntl
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534
CHILD_SCRIPT = Path(__file__).resolve().parent / "sandbox_child.py"

# System directories bound read-only into the minimal root (those that exist).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")

_NS_SCRIPT = r"""
set -eu
NEW="$1"; BOX="$2"; PY="$3"; CHROOT="$4"; SYSTEM="$5"; shift 5
mount -t tmpfs -o mode=0755,size=16m,nosuid,nodev agroot "$NEW"
robind() {
  mkdir -p "$NEW$1"; mount --rbind "$1" "$NEW$1"
  # read-only where the kernel lets us (locked flags may refuse); permissions protect anyway
  mount -o remount,bind,ro "$NEW$1" 2>/dev/null || mount -o remount,bind,ro,nosuid,nodev "$NEW$1" 2>/dev/null || true
}
for d in $SYSTEM; do
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "$NEW$d"
  elif [ -d "$d" ]; then robind "$d"
  fi
done
for d in "$@"; do robind "$d"; done
mkdir -p "$NEW/box" "$NEW/tmp" "$NEW/dev/shm" "$NEW/proc"
mount --rbind "$BOX" "$NEW/box"
mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs "$NEW/tmp"
mount -t tmpfs -o mode=1777,size=16m,nosuid,nodev tmpfs "$NEW/dev/shm"
for n in null zero full random urandom; do
  touch "$NEW/dev/$n"; mount --bind "/dev/$n" "$NEW/dev/$n"
done
mount -t proc -o nosuid,nodev,noexec proc "$NEW/proc"
cd "$NEW"
exec "$CHROOT" "$NEW" "$PY" -I -B /box/sandbox_child.py /box/job.json
"""


@dataclass
class Capabilities:
    """What this machine lets the grader do."""

    root: bool
    namespaces: bool
    reason: str = ""
    userns: bool = False  # namespaces through a user namespace (no root needed)


_NS_FLAGS = ["--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]


def _try_unshare(extra):
    try:
        proc = subprocess.run(["unshare", *extra, *_NS_FLAGS, "true"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed ({exc})"
    if proc.returncode != 0:
        return "unshare not permitted: " + proc.stderr.decode(errors="replace")[:200].strip()
    return ""


@functools.cache
def detect(allow_namespaces=True, force_userns=False):
    """Probe once whether we are root and may create namespaces.

    Root uses plain namespaces and switches student code to an unprivileged user. Without
    root (e.g. a Slurm node), a user namespace still gives the same minimal root file system,
    PID and network isolation; student code then runs as the grader's own user with every
    capability dropped. ``force_userns`` selects that mode even as root (for tests).
    """
    root = os.geteuid() == 0
    if not allow_namespaces:
        return Capabilities(root, False, "disabled by option")
    if not (shutil.which("unshare") and shutil.which("chroot")):
        return Capabilities(root, False, "unshare/chroot not found")
    if root and not force_userns:
        why = _try_unshare([])
        return Capabilities(root, not why, why)
    why = _try_unshare(["--user", "--map-root-user"])
    return Capabilities(root, not why, why or "", userns=not why)


def interpreter_dirs():
    """Directories the child needs for Python and its packages (outside /usr etc.)."""
    import sysconfig

    import numpy

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        dirs.add(sysconfig.get_paths()[key])
    dirs.add(str(Path(numpy.__file__).resolve().parent.parent))
    try:
        import importlib.util

        spec = importlib.util.find_spec("torch")
        if spec and spec.origin:
            dirs.add(str(Path(spec.origin).resolve().parent.parent))
    except (ImportError, ValueError):
        pass
    real = sorted({os.path.realpath(d) for d in dirs} | dirs)
    keep = []
    for d in real:
        if not os.path.isdir(d) or any(d == s or d.startswith(s + "/") for s in SYSTEM_DIRS):
            continue
        if any(d.startswith(k + "/") for k in keep):
            continue
        keep.append(d)
    return keep


UID_RANGE = 256  # sandbox uids: NOBODY, NOBODY - 1, ... (no passwd entry needed)
LOCK_DIR = Path("/run/autograder-uids")


def acquire_uid(preferred):
    """Lock a sandbox uid that no other grader on this machine is using right now.

    Every process of the sandbox uid is killed after each run, so two graders (two CI jobs,
    two grade-all batches) must never share one. Returns ``(uid, lock_fd or None)``.
    """
    try:
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(LOCK_DIR)
        if st.st_uid != 0 or not stat.S_ISDIR(st.st_mode):
            return preferred, None
    except OSError:
        return preferred, None
    for k in range(UID_RANGE):
        uid = preferred - k
        try:
            fd = os.open(LOCK_DIR / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    return preferred, None


def _own_cgroup(controller):
    """This process's cgroup directory for ``controller`` (v1), or the v2 one; else None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            base = Path("/sys/fs/cgroup") / controller
            return base / path.lstrip("/") if base.is_dir() else None
    for line in lines:
        if line.startswith("0::"):
            base = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            try:
                controllers = (Path("/sys/fs/cgroup") / "cgroup.controllers").read_text().split()
            except OSError:
                return None
            return base if controller in controllers else None
    return None


def make_cgroups(name, memory_bytes, max_pids):
    """Best effort: memory and pids cgroups holding the WHOLE sandbox (every process it forks),
    so a fork storm of memory hogs cannot exhaust the machine. Returns the created folders."""
    made = []
    for controller, files in (
        (
            "memory",
            {
                "memory.limit_in_bytes": memory_bytes,
                "memory.max": memory_bytes,
                "memory.memsw.limit_in_bytes": memory_bytes,
                "memory.swap.max": 0,
            },
        ),
        ("pids", {"pids.max": max_pids}),
    ):
        parent = _own_cgroup(controller)
        if parent is None:
            continue
        folder = parent / name
        try:
            folder.mkdir()
        except OSError:
            continue
        ok = False
        for fname, value in files.items():
            try:
                (folder / fname).write_text(str(value))
                ok = ok or fname in ("memory.limit_in_bytes", "memory.max", "pids.max")
            except OSError:
                pass
        if ok:
            made.append(folder)
        else:
            _remove_cgroup(folder)
    return made


def _remove_cgroup(folder):
    for _ in range(50):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


@dataclass
class SandboxResult:
    """What came back from one sandbox run (all of it untrusted except ``records``)."""

    records: dict = field(default_factory=dict)  # exercise id -> supervisor record
    probe: dict = field(default_factory=dict)
    startup: dict = field(default_factory=dict)
    out_dir: Path = None
    log: str = ""
    log_bytes: int = 0
    timed_out: bool = False
    returncode: int = None
    mode: str = ""


class _CappedReader(threading.Thread):
    """Drain a pipe, keeping the first ``cap`` bytes and counting the rest."""

    def __init__(self, stream, cap):
        super().__init__(daemon=True)
        self.stream, self.cap = stream, cap
        self.kept, self.total = bytearray(), 0

    def run(self):
        while True:
            chunk = (
                self.stream.read1(65536)
                if hasattr(self.stream, "read1")
                else self.stream.read(65536)
            )
            if not chunk:
                return
            self.total += len(chunk)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]


def _package_parents():
    import importlib.util

    dirs = []
    for name in ("numpy", "torch", "yaml"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec and spec.origin:
            parent = str(Path(spec.origin).resolve().parent.parent)
            if parent not in dirs:
                dirs.append(parent)
    return dirs


def _processes_of(uid):
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                count += os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                pass
    return count


def kill_user(uid):
    """Kill every process of ``uid`` (a helper switched to that user runs kill -KILL -1)."""
    if os.geteuid() != 0 or uid == 0:
        return
    kill = shutil.which("kill") or "/bin/kill"
    for _ in range(2):
        try:
            subprocess.run(
                [kill, "-KILL", "-1"],
                user=uid,
                group=uid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            pass


def start_sandbox(
    exercises,
    student_file,
    kit_files,
    inputs,
    limits,
    protected,
    unwritable,
    uid=NOBODY,
    allow_namespaces=True,
    require_safe=True,
    force_userns=False,
):
    """Start the sandbox on the student's file and return at once (see :func:`finish_sandbox`).

    ``exercises`` is a list of ``{'id', 'timeout_s'}``; ``student_file`` the student's
    transformer_utils.py as bytes (already read safely); ``kit_files`` maps trusted file names
    (test_functions.py) to bytes; ``inputs`` maps an exercise id to the pickled list of case
    inputs (never targets).
    """
    caps = detect(allow_namespaces, force_userns)
    drop = caps.root and not caps.userns  # switch student code to another uid
    uid_lock = None
    if drop:
        uid, uid_lock = acquire_uid(uid)
    work = Path(tempfile.mkdtemp(prefix="autograder-"))
    os.chmod(work, 0o711)
    box = work / "box"
    box.mkdir(mode=0o755)
    for sub in ("kit", "student", "inputs"):
        (box / sub).mkdir(mode=0o755)
    (box / "student" / "transformer_utils.py").write_bytes(student_file)
    for name, data in kit_files.items():
        (box / "kit" / name).write_bytes(data)
    for ex_id, data in inputs.items():
        (box / "inputs" / f"{ex_id}.pkl").write_bytes(data)
    shutil.copyfile(CHILD_SCRIPT, box / "sandbox_child.py")
    (box / "out").mkdir(mode=0o755)
    out_mounted = False
    if caps.namespaces:
        # A size-limited tmpfs for everything the student's processes may write here, so a
        # flood of files cannot fill the grading machine's disk.
        size_mb = limits.max_file_mb * 2 * max(1, len(exercises)) + 16
        out_mounted = (
            subprocess.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={size_mb}m,mode=0755,nosuid,nodev,noexec",
                    "agout",
                    str(box / "out"),
                ],
                capture_output=True,
            ).returncode
            == 0
        )
    (box / "rec").mkdir(mode=0o700)  # supervisor records: root only
    for ex in exercises:
        # root-owned until the supervisor hands it to the exercise process that writes it
        (box / "out" / ex["id"]).mkdir(mode=0o700)
    box_in_child = "/box" if caps.namespaces else str(box)
    job = {
        "require_safe": require_safe,
        # inside a user namespace we are uid 0 (mapped to our own user): drop capabilities
        "uid": uid if drop else (0 if caps.userns else os.getuid()),
        "gid": uid if drop else (0 if caps.userns else os.getgid()),
        "userns": caps.userns,
        # RLIMIT_NPROC counts all processes of the real user: allow what already runs
        "nproc_userns": _processes_of(os.getuid()) + limits.max_procs + 64,
        # where torch and numpy live (e.g. a user site that `python -I` would not search)
        "site_dirs": _package_parents(),
        "exercises": exercises,
        "limits": vars(limits) if not isinstance(limits, dict) else limits,
        "protected": [str(p) for p in protected],
        "unwritable": [str(p) for p in unwritable],
        "kit": f"{box_in_child}/kit",
        "student": f"{box_in_child}/student",
        "inputs": f"{box_in_child}/inputs",
        "out": f"{box_in_child}/out",
        "rec": f"{box_in_child}/rec",
    }
    (box / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "",
    }
    python = os.path.realpath(sys.executable)
    if caps.namespaces:
        newroot = work / "root"
        newroot.mkdir(mode=0o755)
        cmd = [
            "unshare",
            *(["--user", "--map-root-user"] if caps.userns else []),
            *_NS_FLAGS,
            "--propagation",
            "private",
            "sh",
            "-c",
            _NS_SCRIPT,
            "sandbox",
            str(newroot),
            str(box),
            python,
            shutil.which("chroot"),
            " ".join(SYSTEM_DIRS),
            *interpreter_dirs(),
        ]
        mode = "user-namespaces" if caps.userns else "namespaces"
    else:
        cmd = [python, "-I", "-B", str(box / "sandbox_child.py"), str(box / "job.json")]
        mode = "privilege-drop" if drop else "unprivileged"
    cgroups = []
    if drop:
        # the supervisor (torch, ~1 GB) plus one exercise process's budget
        cgroups = make_cgroups(
            work.name, (limits.memory_mb + 2048) * 1024 * 1024, limits.max_procs * 2 + 32
        )
        if cgroups:
            # enter the cgroups first (the shell writes its own pid), then become the sandbox
            procs = [str(c / "cgroup.procs") for c in cgroups]
            script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1"; shift; n=$((n-1)); done; exec "$@"'
            cmd = ["sh", "-c", script, "sh", str(len(procs)), *procs, *cmd]
    result = SandboxResult(out_dir=box / "out", mode=mode)
    result.cgroups = cgroups
    result.work, result.uid, result.drop = work, uid, drop
    result.out_mounted = out_mounted
    result.uid_lock = uid_lock
    result.deadline = limits.startup_s + sum(ex["timeout_s"] + 5 for ex in exercises)
    result.started = time.monotonic()
    result.proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(work),
        start_new_session=True,
        close_fds=True,
    )
    result.reader = _CappedReader(result.proc.stdout, limits.max_output_kb * 1024)
    result.reader.start()
    return result


def finish_sandbox(result):
    """Wait for the sandbox (killing it at its deadline), kill leftovers, read the records."""
    proc = result.proc
    try:
        remaining = result.deadline - (time.monotonic() - result.started)
        result.returncode = proc.wait(timeout=max(remaining, 0.1))
    except subprocess.TimeoutExpired:
        result.timed_out = True
    finally:
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            pass
        proc.wait()
        if result.drop:
            kill_user(result.uid)
    result.reader.join(timeout=5)
    result.log = result.reader.kept.decode("utf-8", "replace")
    result.log_bytes = result.reader.total
    # The supervisor prints the probe's report and "torch imported" BEFORE any student code
    # runs, so these first lines of the pipe are trustworthy (files could be rewritten later
    # in the user-namespace mode, where student code runs as the same user).
    for line in result.log.splitlines()[:3]:
        head, _, rest = line.partition("] ")
        if not head.startswith("[sandbox"):
            break
        if rest.startswith("probe "):
            try:
                result.probe = json.loads(rest[len("probe ") :])
            except ValueError:
                pass
        elif rest == "torch imported":
            result.startup = {"ok": True}
    rec_dir = result.work / "box" / "rec"
    for name in os.listdir(rec_dir):
        if name.endswith(".json"):
            try:
                data = json.loads((rec_dir / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if name == "startup.json":
                if not result.startup.get("ok"):
                    result.startup = data
            elif name != "probe.json":
                result.records[name[:-5]] = data
    return result


def run_sandbox(*args, **kwargs):
    """:func:`start_sandbox` then :func:`finish_sandbox`."""
    return finish_sandbox(start_sandbox(*args, **kwargs))


def cleanup(result):
    """Remove the sandbox's working directory (after the outputs were read)."""
    work = getattr(result, "work", None)
    if getattr(result, "out_mounted", False):
        subprocess.run(["umount", "-l", str(Path(work) / "box" / "out")], capture_output=True)
    if work and Path(work).exists():
        shutil.rmtree(work, ignore_errors=True)
    for folder in getattr(result, "cgroups", []):
        _remove_cgroup(folder)
    if getattr(result, "uid_lock", None) is not None:
        os.close(result.uid_lock)  # releases the uid for the next sandbox
        result.uid_lock = None
