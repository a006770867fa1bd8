"""A throw-away single-node Slurm cluster on this machine, for testing the sbatch scripts.

It runs Debian's ``slurm-wlm`` and ``munge`` (installed by ``tests/slurm/install_slurm.sh``)
with every file in one temporary directory:

- ``munged`` with a freshly generated key and its own socket,
- ``slurmctld`` and ``slurmd`` on this host, one partition (``kittest``), and
- a GPU generic resource bound to ``/dev/null`` (and ``/dev/zero``, ``/dev/full``,
  ``/dev/urandom`` for more "GPUs"), so that ``--gpus=1`` jobs schedule on a machine
  without a GPU. Jobs get ``CUDA_VISIBLE_DEVICES`` as on a real cluster; PyTorch then finds
  no GPU and uses the CPU.

The node claims 72 CPUs and 128 GB (``SlurmdParameters=config_overrides``) so the scripts'
real resource requests (32 CPUs, 48 GB) are accepted unchanged on a 2-core test machine.
A requeued job is eligible again after ~10 s (``cred_expire=10``; Slurm's default is 120 s).
Everything runs as root (``SlurmUser=root``), which is fine for a private test cluster.

Use it from Python::

    with LocalSlurm() as cluster:           # or LocalSlurm.start() ... cluster.stop()
        job = cluster.sbatch(["--wrap", "hostname"])
        cluster.wait(job)

or by hand (prints the ``SLURM_CONF`` to export, Ctrl-C stops it)::

    python tests/slurm/local_cluster.py

``stop()`` ends exactly the daemons it started, by PID, and removes the temporary directory.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo")
PARTITION = "kittest"
# Room for two of the scripts' jobs (32 CPUs, 48 GB, 1-2 GPUs each) plus small ones at once.
NODE_CPUS = 72
NODE_MEMORY_MB = 131072
# Schedulable "GPUs", not usable ones: Slurm only needs a device file to hand out.
GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
# Job states after which a job will not run again (PENDING/RUNNING/REQUEUED... are not final).
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


class SlurmUnavailable(RuntimeError):
    """Slurm can't run here; the message says why (tests skip with it)."""


def find_program(name: str) -> str | None:
    """Path of a program, also looking in the sbin folders a non-login PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def unavailable_reason() -> str | None:
    """Why a local Slurm cluster can't be started here, or None when it can."""
    missing = [name for name in DAEMONS + CLIENTS if find_program(name) is None]
    if missing:
        return (
            f"Slurm/munge not installed (missing: {', '.join(missing)}); "
            "run 'bash tests/slurm/install_slurm.sh' as root to install slurm-wlm and munge"
        )
    if os.geteuid() != 0:
        return "the local Slurm test cluster must be started as root (slurmd runs jobs as root)"
    return None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the process that started us dies.

    So a test run killed without cleanup (timeout, SIGKILL) still takes its daemons along.
    """
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSlurm:
    """A running single-node cluster; ``env`` is the environment for Slurm client commands."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.node = socket.gethostname().split(".")[0]
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        # Client settings from the caller's shell would change what the tests submit.
        for key in list(self.env):
            if key.startswith(("SBATCH_", "SLURM_", "SALLOC_", "SRUN_")) and key != "SLURM_CONF":
                del self.env[key]

    # ---- start / stop ----------------------------------------------------------------------

    @classmethod
    def start(cls, timeout: float = 60.0) -> LocalSlurm:
        """Start munged, slurmctld and slurmd; raise SlurmUnavailable with the reason if not."""
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        cluster = cls(Path(tempfile.mkdtemp(prefix="kit-slurm-")))
        try:
            cluster._write_config()
            cluster._start_munged()
            cluster._start_daemon("slurmctld", ["-D", "-i", "-f", str(cluster.conf)])
            cluster._wait_for(lambda: cluster._client_ok(["sinfo"]), timeout, "slurmctld")
            cluster._start_daemon("slurmd", ["-D", "-f", str(cluster.conf), "-N", cluster.node])
            cluster._wait_for(cluster._node_idle, timeout, "slurmd (node idle)")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        """Cancel leftover jobs, stop the daemons this object started (by PID), delete the folder."""
        if "slurmctld" in self.pids and "slurmd" in self.pids:
            self.run(["scancel", f"--partition={PARTITION}"])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queue = self.run(["squeue", "-h", "-o", "%i"])
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(1)
        for name in reversed(list(self.pids)):
            self._stop_pid(name, self.pids.pop(name))
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalSlurm:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- jobs ------------------------------------------------------------------------------

    def run(self, args: list[str], cwd: str | Path | None = None, env: dict | None = None):
        """Run a Slurm client command with this cluster's SLURM_CONF; return CompletedProcess."""
        merged = dict(self.env, **(env or {}))
        return subprocess.run(args, cwd=cwd, env=merged, capture_output=True, text=True)

    def sbatch(self, args: list[str], cwd: str | Path | None = None, env: dict | None = None):
        """Submit with ``sbatch --parsable ARGS``; return the job id (str)."""
        result = self.run(["sbatch", "--parsable", *args], cwd=cwd, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); {} if gone."""
        result = self.run(["scontrol", "show", "job", "-o", job_id])
        if result.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def wait(self, job_id: str, timeout: float = 300.0, poll: float = 2.0) -> dict[str, str]:
        """Wait until the job is in a final state; return its job_info. TimeoutError if not."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            time.sleep(poll)
        self.run(["scancel", job_id])
        raise TimeoutError(
            f"job {job_id} not finished after {timeout:.0f} s: {info}\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of each daemon's log, for error messages."""
        parts = []
        for name in DAEMONS:
            path = self.root / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # ---- internals -------------------------------------------------------------------------

    def _write_config(self) -> None:
        root = self.root
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(mode=0o700)
        ctld_port, slurmd_port = _free_port(), _free_port()
        self.conf.write_text(
            f"""# Generated by tests/slurm/local_cluster.py for a throw-away test cluster.
ClusterName=kittest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket.2,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Look at pending (e.g. requeued) jobs every few seconds, not every minute.
SchedulerParameters=sched_interval=5,bf_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:{len(GPU_FILES)} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (root / "gres.conf").write_text(
            "".join(f"NodeName={self.node} Name=gpu File={path}\n" for path in GPU_FILES)
        )

    def _start_munged(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))  # a fresh key: no trust with other hosts
        key.chmod(0o400)
        munged = find_program("munged")
        args = [
            f"--socket={self.root}/munge/munge.socket.2",
            f"--key-file={key}",
            f"--pid-file={self.root}/munge/munged.pid",
            f"--log-file={self.root}/munged.log",
            f"--seed-file={self.root}/munge/munged.seed",
            "--foreground",
            "--force",  # allow running as root with a key in a temporary folder
        ]
        self._spawn("munged", [munged, *args])
        socket_path = self.root / "munge" / "munge.socket.2"
        self._wait_for(socket_path.exists, 20, "munged socket")

    def _start_daemon(self, name: str, args: list[str]) -> None:
        self._spawn(name, [find_program(name), *args])

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.console", "wb")  # noqa: SIM115 (kept open by the child)
        proc = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the test runner must not hit the daemons
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.pids[name] = proc.pid
        self._popen = getattr(self, "_popen", {})
        self._popen[name] = proc

    def _stop_pid(self, name: str, pid: int, timeout: float = 15.0) -> None:
        proc = getattr(self, "_popen", {}).get(name)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            if proc is not None:
                proc.wait(timeout)
                return
        except subprocess.TimeoutExpired:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass

    def _client_ok(self, args: list[str]) -> bool:
        return self.run(args).returncode == 0

    def _node_idle(self) -> bool:
        result = self.run(["sinfo", "-h", "-N", "-o", "%t"])
        return result.returncode == 0 and result.stdout.strip().startswith("idle")

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in getattr(self, "_popen", {}).items():
                if proc.poll() is not None:
                    console = (self.root / f"{name}.console").read_text(errors="replace")
                    raise SlurmUnavailable(
                        f"{name} exited with status {proc.returncode} while waiting for {what}:"
                        f"\n{console[-2000:]}\n{self.log_tail()}"
                    )
            if ready():
                return
            time.sleep(0.5)
        raise SlurmUnavailable(
            f"timed out after {timeout:.0f} s waiting for {what}\n{self.log_tail()}"
        )


def main() -> None:
    """Start a cluster, print how to use it, and stop it on Ctrl-C."""
    cluster = LocalSlurm.start()
    try:
        print(f"local Slurm cluster running; in another shell:\n  export SLURM_CONF={cluster.conf}")
        print("  sinfo; sbatch ...; squeue\nCtrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
