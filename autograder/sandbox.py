"""Run student code in a sandbox child process and collect its (untrusted) outputs.

Layers, strongest first (each is reported by :func:`describe`):

* **namespaces + minimal root** (root with ``unshare``; this machine): fresh mount, PID,
  network, IPC and UTS namespaces. The child's root file system is a tmpfs holding only
  read-only binds of the system directories (/usr, /etc, ...), the Python installation
  (wherever it lives: /tmp, /opt, a home folder, inside the kit), a private /tmp, and the
  sandbox's own box directory: the repository, the hidden data, the labels, the results
  file and /root simply do not exist in there (a protected path that lies inside one of the
  bound folders is covered by an empty mount). The PID namespace dies with the supervisor,
  taking leftovers with it; the network namespace has no interfaces.
* **user namespace** (no root, e.g. a Slurm node): the same minimal root, PID and network
  isolation inside a user namespace; student code runs as the grader's own user with every
  capability dropped. Where the kernel forbids user namespaces the grader refuses, naming
  the setting (:func:`userns_blocker`).
* **privilege drop** (grader running as root, e.g. Gradescope): every exercise process runs as
  an unprivileged user with no supplementary groups and ``no_new_privs``.
* **always**: a probe, run as the sandbox user before any student code, checks every
  protected path *as the sandbox sees it*: a path that names the same file as outside
  (same device and inode) must be unreadable (secrets) or unwritable (the results file, the
  kit, the Python installation); if not, grading refuses to run student code (``--insecure``
  overrides, for local experiments only). Rlimits on CPU seconds, address space, processes
  and file size; a wall-clock timeout; the whole process group and every process of the
  sandbox user killed afterwards; a clean environment; stdin from /dev/null; stdout/stderr
  captured and capped; outputs returned as ``.npz`` read with ``allow_pickle=False``.
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

from . import evidence

NOBODY = 65534
CHILD_SCRIPT = Path(__file__).resolve().parent / "sandbox_child.py"

# System directories bound read-only into the minimal root (those that exist).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")

_NS_SCRIPT = r"""
set -eu
NEW="$1"; BOX="$2"; PY="$3"; CHROOT="$4"; MOUNT="$5"; BOXFLAGS="$6"; shift 6
$MOUNT -t tmpfs -o mode=0755,size=16m,nosuid,nodev agroot "$NEW"
# symbolic links of the system (e.g. /bin -> usr/bin): count, then (path, target) pairs
n="$1"; shift
while [ "$n" -gt 0 ]; do ln -s "$2" "$NEW$1"; shift 2; n=$((n - 1)); done
# the private /tmp first: a Python installation under /tmp is bound on top of it
mkdir -p "$NEW/tmp" "$NEW/dev/shm" "$NEW/proc" "$NEW/box"
$MOUNT -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs "$NEW/tmp"
$MOUNT -t tmpfs -o mode=1777,size=16m,nosuid,nodev tmpfs "$NEW/dev/shm"
# read-only binds: count, then (path, flags the mount already has) pairs. Inside a user
# namespace those flags are locked and must be repeated when remounting read-only; the
# probe checks afterwards that the Python installation really is unwritable.
n="$1"; shift
while [ "$n" -gt 0 ]; do
  mkdir -p "$NEW$1"; $MOUNT --rbind "$1" "$NEW$1"
  $MOUNT -o "remount,bind,ro${2:+,$2}" "$NEW$1" 2>/dev/null \
    || $MOUNT -o remount,bind,ro "$NEW$1" 2>/dev/null || true
  shift 2; n=$((n - 1))
done
# the box read-only (the student's file, the kit, the inputs, the job), except the outputs
# and the supervisor's records: in a user namespace student code owns these files
$MOUNT --rbind "$BOX" "$NEW/box"
$MOUNT -o "remount,bind,ro${BOXFLAGS:+,$BOXFLAGS}" "$NEW/box" 2>/dev/null \
  || $MOUNT -o remount,bind,ro "$NEW/box" 2>/dev/null || true
$MOUNT --rbind "$BOX/out" "$NEW/box/out"
$MOUNT --bind "$BOX/rec" "$NEW/box/rec"
for d in null zero full random urandom; do
  touch "$NEW/dev/$d"; $MOUNT --bind "/dev/$d" "$NEW/dev/$d"
done
$MOUNT -t proc -o nosuid,nodev,noexec proc "$NEW/proc"
# protected paths inside a bound folder: count, then (path, dir|file) pairs, covered
n="$1"; shift
while [ "$n" -gt 0 ]; do
  if [ "$2" = dir ]; then
    $MOUNT -t tmpfs -o ro,size=4k,mode=000,nosuid,nodev,noexec agmask "$NEW$1"
  else
    $MOUNT --bind /dev/null "$NEW$1"
  fi
  shift 2; n=$((n - 1))
done
$MOUNT -o remount,ro "$NEW" 2>/dev/null || true
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
    blocker: tuple = None  # (kernel setting that forbids user namespaces, value that works)


class SandboxUnavailable(Exception):
    """No sandbox that can hide the protected paths from student code (one-line message)."""


_NS_FLAGS = ["--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]
# An ordinary user's PATH often lacks /usr/sbin, where Debian keeps chroot.
_TOOL_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")


def tool(name):
    """Absolute path of a system tool: found on PATH, else in the usual system folders."""
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    for folder in _TOOL_DIRS:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


# Kernel settings that stop an ordinary user from creating the sandbox's namespaces:
# (file under /proc/sys, the value that blocks, the value that works).
_USERNS_SETTINGS = (
    ("kernel/unprivileged_userns_clone", "0", "1"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1", "0"),
    ("kernel/userns_restrict", "1", "0"),
    *((f"user/max_{kind}_namespaces", "0", "a positive number, e.g. 10000")
      for kind in ("user", "mnt", "pid", "net", "ipc", "uts")),
)  # fmt: skip


def userns_blocker(sysctl_dir="/proc/sys"):
    """The kernel setting that forbids unprivileged user namespaces, as ``(setting, fix)``
    (e.g. ``("kernel.unprivileged_userns_clone=0", "1")``), or None if none is found."""
    for rel, blocks, fix in _USERNS_SETTINGS:
        try:
            value = (Path(sysctl_dir) / rel).read_text().strip()
        except OSError:
            continue
        if value == blocks:
            return f"{rel.replace('/', '.')}={value}", fix
    return None


def _try_unshare(unshare, mount, extra):
    """Create the namespaces once and mount what the sandbox mounts (a tmpfs and /proc), so a
    kernel that allows the namespaces but not the mounts in them is found out here."""
    probe = f"{mount} -t tmpfs agprobe /tmp && {mount} -t proc proc /proc"
    try:
        proc = subprocess.run([unshare, *extra, *_NS_FLAGS, "--propagation", "private", "sh", "-c",
                               probe], stdin=subprocess.DEVNULL, capture_output=True, timeout=20)  # fmt: skip
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
    missing = [name for name in ("unshare", "chroot", "mount") if tool(name) is None]
    if missing:
        return Capabilities(root, False, f"{'/'.join(missing)} not found (install util-linux "
                                         "and coreutils)")  # fmt: skip
    unshare, mount = tool("unshare"), tool("mount")
    if root and not force_userns:
        why = _try_unshare(unshare, mount, [])
        return Capabilities(root, not why, why)
    why = _try_unshare(unshare, mount, ["--user", "--map-root-user"])
    blocker = userns_blocker() if why else None
    if blocker:
        why = f"the kernel setting {blocker[0]} forbids user namespaces"
    return Capabilities(root, not why, why, userns=not why, blocker=blocker)


def require_sandbox(allow_namespaces=True, force_userns=False, insecure=False):
    """Raise :class:`SandboxUnavailable` when student code could not be kept away from the
    protected paths: without root and without namespaces it would run as the grader's own
    user, able to read everything the grader reads. Root always has the privilege drop."""
    caps = detect(allow_namespaces, force_userns)
    if caps.root or caps.namespaces or insecure:
        return caps
    if not allow_namespaces:
        how = "drop --no-namespaces"
    elif caps.blocker:
        how = f"ask the administrator to set {caps.blocker[0].split('=')[0]} to {caps.blocker[1]}"
    else:
        how = "run where user namespaces are allowed"
    raise SandboxUnavailable(
        f"refusing to run student code: without root the sandbox needs a user namespace, and "
        f"here {caps.reason}; {how}, grade as root, or add --insecure (trusted code only: the "
        "hidden data is then readable)"
    )


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip("/") + "/")


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


def interpreter_dirs(protected=()):
    """Folders the child needs for Python and its packages (outside /usr etc.), wherever they
    are: under /tmp, /opt, a home folder or the kit's own folder.

    A folder that would expose a protected path is left out when a narrower one does the job
    (a venv made in the kit's folder binds its bin/ and lib/, never the kit); what remains is
    covered inside the sandbox (see :func:`_masks`).
    """
    import sysconfig

    paths = sysconfig.get_paths()
    required = {os.path.dirname(os.path.abspath(sys.executable)), *_package_parents()}
    required |= {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    optional = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    required |= {os.path.realpath(d) for d in required}
    optional |= {os.path.realpath(d) for d in optional}
    protected = {p for q in protected for p in (str(q), os.path.realpath(q))}
    candidates = set(required)
    for d in optional - required:
        if not any(_inside(p, d) for p in protected):
            candidates.add(d)
    keep = []
    for d in sorted(candidates):
        if not os.path.isdir(d) or any(_inside(d, s) for s in SYSTEM_DIRS):
            continue
        if any(_inside(d, k) for k in keep):
            continue
        keep.append(d)
    return keep


def _mount_flags(path):
    """The flags of the mount holding ``path`` that a read-only remount must repeat."""
    try:
        flags = os.statvfs(path).f_flag
    except OSError:
        return ""
    names = [name for bit, name in ((os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev"),
             (os.ST_NOEXEC, "noexec"), (os.ST_NOATIME, "noatime"),
             (os.ST_NODIRATIME, "nodiratime"), (os.ST_RELATIME, "relatime")) if flags & bit]  # fmt: skip
    if not flags & (os.ST_NOATIME | os.ST_RELATIME):
        names.append("strictatime")
    return ",".join(names)


def _masks(protected, bound):
    """Protected paths that lie inside a folder bound into the sandbox, as (path, kind): an
    empty mount covers each. A protected folder that holds the Python installation itself
    cannot be covered; the probe then reports it."""
    masks = []
    for path in sorted({p for q in protected for p in (str(q), os.path.realpath(q))}):
        if not os.path.exists(path) or not any(_inside(path, b) for b in bound):
            continue
        if any(_inside(b, path) for b in bound if b not in SYSTEM_DIRS):
            continue
        if any(_inside(path, m) for m, _ in masks):
            continue
        masks.append((path, "dir" if os.path.isdir(path) else "file"))
    return masks


def _identities(paths, skip=(), depth=2, limit=300):
    """``[{"path", "id": [st_dev, st_ino]}]`` for ``paths`` and, for folders, what they hold
    (``depth`` levels, at most ``limit`` entries per path) except the Python installation
    (``skip``; a venv in the kit's folder), which the sandbox must see. The probe compares
    the identity of what it finds at each path with this one: another file at the same path
    (the sandbox's private /tmp, a bare folder on the way to the Python installation) is no
    leak."""
    out, seen = [], set()

    def add(path, level, budget):
        if budget[0] <= 0 or path in seen:
            return
        if level and any(_inside(path, s) for s in skip):
            return
        seen.add(path)
        try:
            st = os.stat(path)
        except OSError:
            return
        out.append({"path": path, "id": [st.st_dev, st.st_ino]})
        budget[0] -= 1
        if level < depth and stat.S_ISDIR(st.st_mode) and os.path.basename(path) != ".git":
            try:
                names = sorted(os.listdir(path))
            except OSError:
                return
            for name in names:
                add(os.path.join(path, name), level + 1, budget)

    for p in paths:
        for q in dict.fromkeys((os.path.abspath(str(p)), os.path.realpath(str(p)))):
            add(q, 0, [limit])
    return out


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
    kill = tool("kill") or "/bin/kill"
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
    transformer_utils.py as bytes (already read safely); ``kit_files`` maps the trusted files'
    relative paths (the exercise-check runtime, ``kit/exercise_checks/*.py``) to bytes; ``inputs`` maps an exercise id to the pickled list of case
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
        target = box / "kit" / name
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_bytes(data)
    for ex_id, data in inputs.items():
        (box / "inputs" / f"{ex_id}.pkl").write_bytes(data)
    shutil.copyfile(CHILD_SCRIPT, box / "sandbox_child.py")
    (box / "out").mkdir(mode=0o755)
    out_mounted = False
    if caps.namespaces and caps.root:
        # A size-limited tmpfs for everything the student's processes may write here, so a
        # flood of files cannot fill the grading machine's disk.
        size_mb = limits.max_file_mb * 2 * max(1, len(exercises)) + 16
        opts = f"size={size_mb}m,mode=0755,nosuid,nodev,noexec"
        out_mounted = (
            subprocess.run([tool("mount") or "mount", "-t", "tmpfs", "-o", opts, "agout",
                            str(box / "out")], capture_output=True).returncode == 0
        )  # fmt: skip
    (box / "rec").mkdir(mode=0o700)  # supervisor records: root only
    for ex in exercises:
        # root-owned until the supervisor hands it to the exercise process that writes it
        (box / "out" / ex["id"]).mkdir(mode=0o700)
    box_in_child = "/box" if caps.namespaces else str(box)
    python_dirs = interpreter_dirs(protected)
    job = {
        "require_safe": require_safe,
        # inside a user namespace we are uid 0 (mapped to our own user): drop capabilities
        "uid": uid if drop else (0 if caps.userns else os.getuid()),
        "gid": uid if drop else (0 if caps.userns else os.getgid()),
        "userns": caps.userns,
        # RLIMIT_NPROC counts all processes of the real user: allow what already runs
        "nproc_userns": _processes_of(os.getuid()) + limits.max_procs + 64,
        "namespaces": caps.namespaces,  # each exercise gets a private mount namespace
        "exercises": exercises,
        "limits": vars(limits) if not isinstance(limits, dict) else limits,
        "kit": f"{box_in_child}/kit",
        "student": f"{box_in_child}/student",
        "inputs": f"{box_in_child}/inputs",
        "out": f"{box_in_child}/out",
        "rec": f"{box_in_child}/rec",
    }
    # The host paths go to the supervisor alone: it reads this root-only file, then deletes it,
    # before any student code runs (the job file stays readable in the sandbox).
    paths = {
        # checked by the probe as the sandbox sees them (see _identities)
        "protected": _identities(protected, skip=python_dirs, depth=2),
        "unwritable": _identities(unwritable, skip=python_dirs, depth=1)
        + _identities(python_dirs, depth=0),
        # where torch and numpy live (e.g. a user site that `python -I` would not search)
        "site_dirs": _package_parents(),
    }
    fd = os.open(box / "rec" / "paths.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(paths, fh)
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
    # the environment's own interpreter (not the one its symlink points to), so that inside the
    # sandbox it finds its pyvenv.cfg and site-packages exactly as outside
    python = os.path.abspath(sys.executable)
    if caps.namespaces:
        newroot = work / "root"
        newroot.mkdir(mode=0o755)
        links, binds = [], []
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                links += [d, os.readlink(d)]
            elif os.path.isdir(d):
                binds.append(d)
        binds += python_dirs
        masks = _masks(protected, binds)
        cmd = [
            tool("unshare"),
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
            tool("chroot"),
            tool("mount"),
            _mount_flags(str(box)),
            str(len(links) // 2),
            *links,
            str(len(binds)),
            *(x for d in binds for x in (d, _mount_flags(d))),
            str(len(masks)),
            *(x for m in masks for x in m),
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
    result.exercise_ids = [ex["id"] for ex in exercises]
    result.work, result.uid, result.drop = work, uid, drop
    result.out_mounted = out_mounted
    result.uid_lock = uid_lock
    result.deadline = limits.startup_s + sum(ex["timeout_s"] + 5 for ex in exercises)
    result.checked = len(paths["protected"]) + len(paths["unwritable"])
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
                result.probe = evidence.clean_probe(json.loads(rest[len("probe ") :]))
            except (ValueError, RecursionError):
                pass
        elif rest == "torch imported":
            result.startup = {"ok": True}
    # The records are the supervisor's, in a folder that exercise processes cannot reach
    # (root-only, or covered in their mount namespace); read as untrusted data all the same.
    rec_dir = result.work / "box" / "rec"
    if not result.startup.get("ok"):
        try:
            result.startup = evidence.clean_startup(evidence.read_json(rec_dir / "startup.json"))
        except evidence.EvidenceError:
            pass
    for ex_id in result.exercise_ids:
        try:
            record = evidence.clean_record(evidence.read_json(rec_dir / f"{ex_id}.json"))
        except evidence.EvidenceError:
            continue
        if record is not None:
            result.records[ex_id] = record
    return result


def run_sandbox(*args, **kwargs):
    """:func:`start_sandbox` then :func:`finish_sandbox`."""
    return finish_sandbox(start_sandbox(*args, **kwargs))


def cleanup(result):
    """Remove the sandbox's working directory (after the outputs were read)."""
    work = getattr(result, "work", None)
    if getattr(result, "out_mounted", False):
        umount = tool("umount") or "umount"
        subprocess.run([umount, "-l", str(Path(work) / "box" / "out")], capture_output=True)
    if work and Path(work).exists():
        shutil.rmtree(work, ignore_errors=True)
    for folder in getattr(result, "cgroups", []):
        _remove_cgroup(folder)
    if getattr(result, "uid_lock", None) is not None:
        os.close(result.uid_lock)  # releases the uid for the next sandbox
        result.uid_lock = None
