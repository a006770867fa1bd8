"""Sandbox supervisor: the ONLY autograder code that runs inside the sandbox.

This file is copied into the sandbox's box directory and started by ``autograder.sandbox``
(as root inside fresh mount/PID/network namespaces and a minimal root file system when the
platform allows it). It never imports the autograder package and never sees the hidden
targets, the labels or the results file.

Lifecycle:
1. probe: a forked, unprivileged process tries to read every protected path and to write
   the results file, the kit and the Python installation, where they are the same files as
   the grader's (same device and inode); the outcome goes to ``rec/probe.json`` (root-only),
   so the grader can say which protections really held.
2. import torch once (the expensive part), with no student code loaded yet;
3. per exercise: fork a FRESH process, drop it to the sandbox user with rlimits, import the
   student's transformer_utils and the kit's trusted exercise checks there, run
   ``RUNNERS[id](tu, case_input)`` on each case, save the outputs as ``.npy`` arrays in an
   ``.npz`` archive (never pickle) and a small status JSON; the supervisor enforces the
   wall-clock timeout (first asking the process for its threads' stacks, so the grader can
   name the line that was running) and then kills every process of the sandbox user
   (leftovers included) and records how the process ended in ``rec/<id>.json``.

Each exercise process starts clean: with namespaces it gets a mount namespace of its own
(fresh /tmp and /dev/shm, the records covered, of the outputs only its own folder), which
vanishes with its last process; without them, the supervisor deletes what the sandbox user
left in the shared temporary folders. It cannot start other programs (seccomp refuses
execve), and the kit's forbidden-op guard is in force in all its threads before the
student's module is imported.

Everything the exercise process writes is untrusted: the grader checks types, shapes,
dtypes and values itself, against targets this process never had.
"""

# Everything the exercise processes use is imported here, at start-up: without namespaces the
# sandbox user may be unable to read the Python installation (e.g. in root's home folder).
import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import sys
import time
import traceback

JOB = json.load(open(sys.argv[1], encoding="utf-8"))
UID, GID = JOB["uid"], JOB["gid"]
DROP = os.getuid() == 0 and UID != 0
USERNS = bool(JOB.get("userns"))


T0 = time.monotonic()


def _say(msg):
    sys.stdout.write(f"[sandbox {time.monotonic() - T0:6.2f}s] {msg}\n")
    sys.stdout.flush()


def _set_no_new_privs():
    """prctl(PR_SET_NO_NEW_PRIVS): setuid binaries can no longer raise privileges."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(38, 1, 0, 0, 0) == 0
    except Exception:
        return False


def _vm_size_bytes():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _oom_score(value):
    """Make the kernel's out-of-memory killer prefer (high value) or spare (low) this process."""
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write(str(value))
    except OSError:
        pass


def _drop_bounding_set():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in range(64):
            libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; fails harmlessly past the last cap
    except Exception:
        pass


def _drop_all_capabilities():
    """User-namespace mode: we are uid 0 in the namespace; give up every capability for good
    (bounding, effective, permitted, inheritable, ambient), so the process can neither escape
    the chroot nor mount nor signal other users' processes."""
    libc = ctypes.CDLL(None, use_errno=True)
    _drop_bounding_set()
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]  # fmt: skip

    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        os._exit(96)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("CapEff:", "CapPrm:", "CapBnd:")) and int(line.split()[1], 16):
                os._exit(96)


def drop_privileges(limits):
    """Apply the rlimits, then become the unprivileged sandbox user for good."""
    os.setsid()  # own session and process group: the whole group can be killed
    _oom_score(1000)  # student processes are the first to go when memory runs out
    mb = 1024 * 1024
    rl = [
        (resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
        (resource.RLIMIT_FSIZE, limits["max_file_mb"] * mb, limits["max_file_mb"] * mb),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 1024, 1024),
    ]
    if limits["memory_mb"] > 0:
        # torch already maps a lot of (mostly shared) address space: allow that plus the budget
        cap = _vm_size_bytes() + limits["memory_mb"] * mb
        rl.append((resource.RLIMIT_AS, cap, cap))
    if DROP:
        # counted per user, so it only bites once we are the sandbox user
        rl.append((resource.RLIMIT_NPROC, limits["max_procs"], limits["max_procs"]))
    elif USERNS:
        rl.append((resource.RLIMIT_NPROC, JOB["nproc_userns"], JOB["nproc_userns"]))
    for which, soft, hard in rl:
        resource.setrlimit(which, (soft, hard))
    if DROP:
        _drop_bounding_set()  # no capability can ever come back, even through exec
        os.setgroups([])
        os.setresgid(GID, GID, GID)
        os.setresuid(UID, UID, UID)
        if os.getuid() != UID or os.geteuid() != UID:
            os._exit(97)
    elif USERNS:
        _drop_all_capabilities()
    _set_no_new_privs()


def kill_sandbox_user():
    """Kill every process of the sandbox user (leftovers, daemons, fork storms)."""
    if not DROP:
        if os.getpid() == 1:  # init of our PID namespace: everyone else in it goes
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            reap()
        return
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(UID, UID, UID)
                os.kill(-1, signal.SIGKILL)  # all processes this user may signal, not us
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(pid, 0)
    reap()


def reap():
    """Collect zombies (we may be PID 1 of the namespace)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


# ---------------------------------------------------------------- isolation of one exercise
_MS = {"rdonly": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "remount": 32, "bind": 4096,
       "rec": 16384, "private": 1 << 18}  # fmt: skip
CLONE_NEWNS = 0x00020000


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _mount(libc, source, target, fstype, flags, data=None):
    args = [None if a is None else a.encode() for a in (source, target, fstype)]
    bits = 0
    for name in flags:
        bits |= _MS[name]
    if libc.mount(*args, bits, None if data is None else data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mounts_under(top):
    """The outermost mount points strictly below ``top``, from /proc/self/mountinfo."""
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            # field 5 is the mount point, with space, tab, newline, backslash octal-escaped
            point = line.split()[4]
            for code in ("\\040", "\\011", "\\012", "\\134"):
                point = point.replace(code, chr(int(code[1:], 8)))
            if point.startswith(top + "/"):
                points.append(point)
    points.sort()
    outer = []
    for point in points:
        if not any(point.startswith(o + "/") or point == o for o in outer):
            outer.append(point)
    return outer


def private_view(out_dir):
    """A mount namespace for this exercise process and what it starts: a fresh /tmp and
    /dev/shm, the supervisor's records covered, and of the outputs folder only this
    exercise's own. All of it vanishes with the exercise's last process, so nothing written
    here is visible to the next exercise. Needs the namespaces' privileges (before the drop)."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError("unshare(CLONE_NEWNS) failed")
    _mount(libc, None, "/", None, ("rec", "private"))
    # A Python installation under /tmp (a venv in /tmp is common) is bound inside the sandbox's
    # /tmp; the fresh /tmp would hide it, and every module torch imports lazily later (e.g.
    # torch.nested._internal in a forked worker) would be missing. Keep those binds.
    kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in _mounts_under("/tmp")]
    _mount(libc, "tmpfs", "/tmp", "tmpfs", ("nosuid", "nodev"), "mode=1777,size=64m")
    for path, fd in kept:
        os.makedirs(path, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{fd}", path, None, ("bind", "rec"))
        os.close(fd)
        if not os.statvfs(path).f_flag & os.ST_RDONLY:  # a bind keeps the outer bind's flags
            try:
                _mount(libc, None, path, None, ("remount", "bind", "rdonly"))
            except OSError:
                pass  # as outside: the probe found the installation unwritable all the same
    _mount(libc, "tmpfs", "/dev/shm", "tmpfs", ("nosuid", "nodev"), "mode=1777,size=16m")
    cover = ("rdonly", "nosuid", "nodev", "noexec")
    _mount(libc, "agcover", JOB["rec"], "tmpfs", cover, "mode=000,size=4k")
    keep = os.open(out_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        _mount(libc, "agout", JOB["out"], "tmpfs", cover[1:], "mode=0755,size=64k")
        try:
            os.mkdir(out_dir, 0o700)
            _mount(libc, f"/proc/self/fd/{keep}", out_dir, None, ("bind",))
            _mount(libc, None, JOB["out"], None, ("remount", *cover))
        except OSError:
            libc.umount2(JOB["out"].encode(), 2)  # MNT_DETACH: this exercise's folder is back
            raise
    finally:
        os.close(keep)


# Folders where any user may create files, swept after each exercise when no private view
# hides them (no namespaces).
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")


def sweep(uid, folders=SHARED_TMP, depth=3):
    """Delete what ``uid`` left in the shared temporary folders (its processes are dead)."""
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_uid == uid:
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
                elif depth > 1 and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
                    sweep(uid, (entry.path,), depth - 1)  # e.g. a world-writable folder in /tmp
            except OSError:
                pass


# execve and execveat, per architecture (AUDIT_ARCH value, syscall numbers)
_EXEC_SYSCALLS = {"x86_64": (0xC000003E, (59, 322)), "aarch64": (0xC00000B7, (221, 281))}


def refuse_exec():
    """seccomp filter: from now on execve/execveat fail with EPERM in this process and every
    process it forks (x32 and foreign-architecture system calls too). A fresh program, e.g.
    another Python, would run without the kit's forbidden-op guard; threads and fork are
    fine (a forked child keeps the guard). Needs no_new_privs. True when installed."""
    found = _EXEC_SYSCALLS.get(os.uname().machine)
    if not found:
        return False
    arch, calls = found

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint32)]  # fmt: skip

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JGE, BPF_RET
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(calls)
    code = [(load, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, deny), (load, 0, 0, 0)]
    code.append((jge, n + 1, 0, 0x40000000))  # x32 system calls (x86_64): refused
    code += [(jeq, n - i, 0, nr) for i, nr in enumerate(calls)]
    code += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    filters = (Filter * len(code))(*(Filter(*c) for c in code))
    program = Program(len(code), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0  # PR_SET_SECCOMP, FILTER


# ---------------------------------------------------------------- 1. probe
def _same_file(item):
    """Whether ``item["path"]``, as the sandbox sees it, is the protected file itself (same
    device and inode as the grader saw) rather than another file at the same path."""
    try:
        st = os.stat(item["path"])
    except OSError:
        return False
    return [st.st_dev, st.st_ino] == item["id"]


def probe(paths):
    """Check, as the sandbox user, that the protected paths are out of reach (``paths``: the
    grader's ``{"protected", "unwritable"}``), and that programs cannot be started."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        report = {"uid": None, "readable": [], "writable": []}
        try:
            drop_privileges(JOB["limits"])
            report["uid"] = os.getuid()
            report["exec_refused"] = refuse_exec()
            for item in paths["protected"]:
                path = item["path"]
                if not _same_file(item):
                    continue  # not there, or another file (e.g. in the private /tmp)
                try:
                    if os.path.isdir(path):
                        os.listdir(path)
                    else:
                        with open(path, "rb") as fh:
                            fh.read(1)
                    report["readable"].append(path)
                except OSError:
                    pass
            for item in paths["unwritable"]:
                path = item["path"]
                if not _same_file(item):
                    continue
                if os.path.isdir(path):
                    writable = os.access(path, os.W_OK)  # could add, remove or rename entries
                else:
                    try:  # opening for writing changes nothing; no O_CREAT
                        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
                        writable = True
                    except OSError:
                        writable = False
                if writable:
                    report["writable"].append(path)
        except BaseException as exc:  # report, never crash silently
            report["error"] = repr(exc)
        os.write(w, json.dumps(report).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    kill_sandbox_user()
    try:
        report = json.loads(data)
    except ValueError:
        report = {"error": "probe gave no answer"}
    write_json(os.path.join(JOB["rec"], "probe.json"), report)
    return report


# ---------------------------------------------------------------- 2. exercise process
def _flatten(obj, prefix, out, types):
    import torch

    if isinstance(obj, torch.Tensor):
        types[prefix] = f"{type(obj).__module__}.{type(obj).__qualname__}"
        out[prefix] = torch.Tensor.numpy(torch.Tensor.cpu(torch.Tensor.detach(obj)))
    elif isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            _flatten(item, f"{prefix}/{i}", out, types)
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _flatten(obj[key], f"{prefix}/{key}", out, types)
    else:
        types[prefix] = f"{type(obj).__module__}.{type(obj).__qualname__}"


def _decode(obj):
    """Inverse of autograder.data.encode_inputs: ``{"__tensor__": ndarray}`` -> tensor."""
    import torch

    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return torch.from_numpy(obj["__tensor__"].copy())
        return type(obj)((k, _decode(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(v) for v in obj)
    return obj


def _classify(exc):
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, NotImplementedError):
        return "not_implemented"
    if "forbidden" in name.lower() or "forbidden" in text.lower()[:200]:
        return "forbidden"
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text:
        return "memory"
    if name == "SkipTest":
        return "skipped"
    if isinstance(exc, SystemExit):
        return "exit"
    return "error"


def _stage(out_dir, text):
    """Say what the exercise process is doing (a time-out names it), in its outputs folder."""
    path = os.path.join(out_dir, "stage.txt")
    try:
        os.unlink(path)  # a new file rather than a truncated one: no flush on ext4
    except OSError:
        pass
    try:
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(text[:400])
    except OSError:
        pass


def run_exercise(ex, exec_refused):
    """Body of the fresh exercise process (already unprivileged)."""
    out_dir = os.path.join(JOB["out"], ex["id"])
    status = {"kind": "error", "message": "", "types": {}}

    def finish():
        write_json(os.path.join(out_dir, "status.json"), status)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    try:
        import faulthandler
        import pickle

        import numpy as np
        import torch

        os.chdir(out_dir)
        # on a time-out the supervisor sends SIGUSR1 and this writes every thread's stack
        # open for the process's whole life
        stacks = open(os.path.join(out_dir, "stack.txt"), "w", encoding="utf-8")
        faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
        # the kit's trusted exercise checks, imported before the fork
        from kit.exercise_checks import forbidden, harness, runners

        # before any student code: the forbidden ops are refused in every thread from now on
        guard = forbidden.guard_process(ex["id"], os.path.join(out_dir, "forbidden.log"))
        sys.path.insert(1, JOB["student"])  # after the kit folder: the kit's files win
        stage = "importing transformer_utils.py"
        _stage(out_dir, stage)
        import transformer_utils as tu

        with open(os.path.join(JOB["inputs"], ex["id"] + ".pkl"), "rb") as fh:
            cases = _decode(pickle.load(fh))
        runner = runners.RUNNERS[ex["id"]]
        arrays, types = {}, {}
        for i, case_input in enumerate(cases):
            stage = f"running case {i + 1} of {len(cases)} [{harness.describe_input(case_input)}]"
            _stage(out_dir, stage)
            torch.manual_seed(0)
            with forbidden.forbidden_ops(ex["id"]), harness.warnings_at_student_lines():
                result = runner(tu, case_input)
            _flatten(result, f"c{i}", arrays, types)
        guard.check()  # a thread or a forked child that used one after its case ended
        status["types"] = types
        stage = "saving the outputs"
        _stage(out_dir, stage)
        # only plain numeric arrays go back; np.savez refuses nothing, the grader checks
        np.savez(
            os.path.join(out_dir, "outputs.npz"), **{k: np.asarray(v) for k, v in arrays.items()}
        )
        status["kind"] = "ok"
    except BaseException as exc:
        try:
            status["kind"] = _classify(exc)
            status["message"], status["traceback"] = _describe_failure(
                exc, locals().get("stage", "starting"), exec_refused
            )
        except BaseException:  # an exception whose text cannot even be computed
            status["message"] = f"{type(exc).__name__} (its message could not be shown)"
    finish()


_EXEC_FILES = ("subprocess.py", "os.py", "popen_spawn_posix.py", "popen_forkserver.py",
               "spawn.py", "forkserver.py", "util.py", "pty.py")  # fmt: skip


def _exec_refused_note(exc):
    """A note when ``exc`` (or what it came from) is the refusal to start a program."""
    seen = 0
    while exc is not None and seen < 5:
        frames = traceback.extract_tb(exc.__traceback__)
        if isinstance(exc, OSError) and any(
            os.path.basename(f.filename) in _EXEC_FILES for f in frames[-4:]
        ):
            return (
                "\nNote: exercise processes may not start other programs (subprocess, os.exec*, "
                "multiprocessing's spawn and forkserver); compute the answer in this process."
            )
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return ""


def _describe_failure(exc, stage, exec_refused=False):
    """(message, where): the exception and the case it happened in, then the lines of the
    student's transformer_utils.py it came from (the kit's and torch's frames are noise to a
    student, so they are left out unless the student's file is not involved at all)."""
    message = f"{type(exc).__name__} while {stage}: {exc}".strip()[:2000]
    if exec_refused:
        message += _exec_refused_note(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.basename(f.filename) == "transformer_utils.py"]
    if not mine:
        return message, "".join(traceback.format_list(frames[-2:]))[-3000:]
    where = [
        f"  at transformer_utils.py:{f.lineno} in {f.name}:  {(f.line or '').strip()}"
        for f in mine[-3:]  # the failing line last
    ]
    return message, "\n".join(where)[-3000:]


def _read_paths():
    """The grader's protected paths (host paths, for the probe only): read, then deleted, so
    that neither the job file nor this process's memory shows them to student code."""
    where = os.path.join(JOB["rec"], "paths.json")
    with open(where, encoding="utf-8") as fh:
        paths = json.load(fh)
    try:
        os.unlink(where)
    except OSError:
        pass
    return paths


def _dump_stacks(pid, out_dir):
    """Ask a timed-out exercise process for its threads' stacks (faulthandler, registered
    before the student's module was imported, writes them to stack.txt) before killing it."""
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return
    last, end = -1, time.monotonic() + 0.5
    while time.monotonic() < end:  # the handler runs at once, even inside a long C call
        time.sleep(0.02)
        try:
            size = os.stat(os.path.join(out_dir, "stack.txt")).st_size
        except OSError:
            size = 0
        if size and size == last:
            return
        last = size


def _wait_exercise(pid, deadline, out_dir):
    """Wait for the exercise process until ``deadline``; ``(timed_out, wait status)``."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return False, status
        if time.monotonic() > deadline:
            _dump_stacks(pid, out_dir)
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return True, os.waitpid(pid, 0)[1]
        time.sleep(0.01)


def run_one(ex, namespaces, exec_ok):
    """Fork the exercise's fresh process, wait for it, clean up after it; its record."""
    out_dir = os.path.join(JOB["out"], ex["id"])
    if DROP:
        os.chown(out_dir, UID, GID)  # writable by this exercise's process only
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            if namespaces:
                try:
                    private_view(out_dir)
                except OSError:
                    pass  # the supervisor's sweep still clears the shared folders
            drop_privileges(JOB["limits"])
            run_exercise(ex, exec_ok and refuse_exec())
        finally:
            os._exit(98)
    timed_out, status = _wait_exercise(pid, start + ex["timeout_s"], out_dir)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    kill_sandbox_user()
    if DROP or namespaces:
        sweep(UID)  # anything left where the next exercise could see it
    if DROP:
        os.chown(out_dir, 0, 0)  # later exercises cannot touch these outputs
        os.chmod(out_dir, 0o700)
    return {
        "timed_out": timed_out,
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "wall_s": round(time.monotonic() - start, 3),
        "cpu_children_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main():
    os.umask(0o022)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _oom_score(-900)  # the supervisor outlives the exercise processes
    paths = _read_paths()
    report = probe(paths)
    site_dirs = paths.get("site_dirs", [])
    del paths
    _say("probe " + json.dumps(report))  # first line of the pipe, before any student code
    unsafe = report.get("error") or report.get("readable") or report.get("writable")
    if JOB["require_safe"] and unsafe:
        write_json(
            os.path.join(JOB["rec"], "startup.json"),
            {
                "error": "refusing to run student code: the sandbox user can reach protected paths "
                f"({report})"
            },
        )
        return
    for path in site_dirs:  # e.g. a user site that `python -I` skips
        if path not in sys.path:
            sys.path.append(path)
    try:
        import faulthandler  # noqa: F401  (warm the caches)
        import io  # noqa: F401
        import pickle  # noqa: F401
        import zipfile  # noqa: F401

        import numpy  # noqa: F401
        import torch

        torch.set_num_threads(1)
        # The kit's trusted exercise checks (they import transformer_utils lazily, so no
        # student code runs here); one pass through forbidden_ops loads torch's lazy modules
        # once instead of once per exercise process.
        sys.path.insert(0, JOB["kit"])
        from kit.exercise_checks import forbidden, harness, runners  # noqa: F401

        for ex in JOB["exercises"]:
            with forbidden.forbidden_ops(ex["id"]):
                torch.nn.functional.softmax(torch.ones(2, 3) @ torch.ones(3, 2), dim=-1).sum()
    except BaseException as exc:
        write_json(os.path.join(JOB["rec"], "startup.json"), {"error": repr(exc)})
        raise
    write_json(os.path.join(JOB["rec"], "startup.json"), {"ok": True})
    _say("torch imported")
    namespaces = bool(JOB.get("namespaces"))
    for ex in JOB["exercises"]:
        _say(f"running exercise {ex['id']}")
        rec = run_one(ex, namespaces, bool(report.get("exec_refused")))
        write_json(os.path.join(JOB["rec"], ex["id"] + ".json"), rec)
    _say("all exercises done")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
