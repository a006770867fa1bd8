"""Small helpers shared by the training demos (flowers and PixMo).

- ``UserError``: a bad input the user can fix; demos print its one-line message and exit 1.
- Run directories: ``prepare_run_dir`` enforces the kit's rules (an existing run needs
  ``--resume``; ``--resume`` needs ``checkpoint.pt``).
- Atomic writes (``atomic_torch_save``, ``atomic_write_text``, ``write_predictions``): write a
  temporary file next to the target, then ``os.replace`` it, so a crash or a Slurm time limit
  never leaves a half-written checkpoint or prediction file. ``BackgroundSaver`` does the
  checkpoint writes in a thread while training goes on.
- Distributed setup (``init_distributed``): torchrun or Slurm environment variables,
  ``env://`` rendezvous, NCCL on the GPU and gloo on the CPU.
- Random-number state capture/restore for exact resumption.
- Stop requests (``stop_on_signals``, ``stop_requested``): SIGTERM or SIGUSR1 (Slurm's time
  limit) sets a flag instead of killing the process; the Trainer checkpoints at its next step.
- ``run_main``: the top-level wrapper that turns ``UserError`` into one line and exit 1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import logging
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import yaml

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "preempted, resume me"; the sbatch scripts requeue on it
EXIT_USER_ERROR = 1

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
LOG_FILE = "train.log"


class UserError(Exception):
    """A problem with the user's input; the message is one line saying what to do."""


class Preempted(Exception):
    """Raised by the Trainer after it saved a checkpoint because of SIGTERM/SIGUSR1."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_stop_event = threading.Event()


def request_stop(*_signal_args) -> None:
    """Ask training to write a checkpoint and stop at its next step (also a signal handler)."""
    _stop_event.set()


def stop_requested() -> bool:
    return _stop_event.is_set()


def clear_stop_request() -> None:
    _stop_event.clear()


@contextlib.contextmanager
def stop_on_signals():
    """While active, SIGTERM and SIGUSR1 call ``request_stop`` instead of killing the process.

    ``run_main`` enters it before any slow start-up work, so a signal that arrives while the
    data loads is not lost: the Trainer sees the request at its first step, writes
    checkpoint.pt and the process exits with status 75 (resumable). Only the main thread
    may install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_main(main: Callable[[], Any]) -> None:
    """Call ``main()`` with stop-on-signal handlers installed; a ``UserError`` becomes one
    line on stderr and exit status 1, and ``Preempted`` exits with status 75 so the
    scheduler requeues the job."""
    try:
        with stop_on_signals():
            main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Preempted as err:
        print(f"preempted: {err}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ------------------------------------------------------------------ run directories


def is_existing_run(path: str | Path) -> bool:
    """A directory holds a run iff it has config.yaml or checkpoint.pt (Slurm logs don't count)."""
    path = Path(path)
    return (path / CONFIG_FILE).exists() or (path / CHECKPOINT_FILE).exists()


def prepare_run_dir(path: str | Path, resume: bool, create: bool = True) -> Path:
    """Check the run-directory rules and (if ``create``) create the directory; returns it.

    Raises UserError if ``path`` already holds a run and ``resume`` is False, or if
    ``resume`` is True and there is no ``checkpoint.pt`` to resume from. Nothing is written
    except the (empty) directory itself. Call it with ``create=False`` first to check
    before doing slow work, then again to create.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--output_dir {path} is a file, not a directory; choose another path")
    if resume:
        if not (path / CHECKPOINT_FILE).is_file():
            raise UserError(
                f"--resume given but {path / CHECKPOINT_FILE} does not exist; "
                "drop --resume to start a new run"
            )
    elif is_existing_run(path):
        raise UserError(
            f"{path} already holds a run ({CONFIG_FILE} or {CHECKPOINT_FILE}); pass --resume to "
            "continue it, or choose another --output_dir"
        )
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file behind."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def to_cpu_copy(obj: Any) -> Any:
    """A deep copy of ``obj`` with every tensor copied to the CPU (for saving in the
    background while training goes on changing the originals in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


class BackgroundSaver:
    """``atomic_torch_save`` in one background thread, so training does not wait for disk.

    ``save(obj, path)`` snapshots ``obj`` to the CPU at once (the only part the caller waits
    for: a ~200 MB optimizer state copies in milliseconds, while writing it takes about half
    a second) and writes it in order with the other saves; at most ``max_pending`` writes
    queue up. ``wait()`` blocks until every write is on disk and re-raises the first error.
    Files are still replaced atomically, so a crash leaves the previous complete file.
    """

    def __init__(self, max_pending: int = 2):
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # started on demand
        self._pending: list[concurrent.futures.Future] = []
        self.max_pending = max_pending

    def save(self, obj: Any, path: str | Path) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0).result()
        snapshot = to_cpu_copy(obj)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="saver")
        self._pending.append(self._pool.submit(atomic_torch_save, snapshot, Path(path)))

    def wait(self) -> None:
        """Finish every write (and stop the thread); then raise the first error, if any."""
        pending, self._pending = self._pending, []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for future in pending:
            future.result()


def write_predictions(path: str | Path, preds: Iterable[int]) -> None:
    """Write one integer class per line (test-set order), atomically."""
    lines = [str(int(p)) for p in preds]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def write_config(run_dir: Path, config: dict) -> None:
    """Save the resolved config as ``config.yaml`` (atomically)."""
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=True))


def check_resume_config(run_dir: Path, config: dict) -> None:
    """On --resume, the resolved config must equal the saved one (else a one-line error)."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = yaml.safe_load(yaml.safe_dump(config))  # same normalisation as the saved file
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        raise UserError(
            f"--resume: the settings differ from {saved_path} in {', '.join(differ)}; "
            "resume with the same preset and flags, or start a new --output_dir"
        )


# ------------------------------------------------------------------ logging


def setup_logging(
    run_dir: Path | None, is_main: bool = True, name: str = "train"
) -> logging.Logger:
    """A logger writing to stdout and ``run_dir/train.log`` (rank 0 only; others stay quiet)."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.ERROR)  # one copy of each message
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if run_dir is not None and is_main:
        file = logging.FileHandler(Path(run_dir) / LOG_FILE)
        file.setFormatter(fmt)
        logger.addHandler(file)
    return logger


# ------------------------------------------------------------------ devices and processes


@dataclass
class DistContext:
    """Who this process is: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(local_rank: int = 0, device: str = "auto") -> torch.device:
    """``cuda:<local_rank>`` when a GPU is available (or asked), else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but no GPU is available; use device: auto")
        torch.cuda.set_device(local_rank)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts outside autocast
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda", local_rank)
    return torch.device(device)


def _env_from_slurm() -> None:
    """Under ``srun`` without torchrun, translate Slurm's variables into torch's env:// ones."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # single-node jobs; multi-node: set it
    os.environ.setdefault(
        "MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000)
    )


def init_distributed(device: str = "auto") -> DistContext:
    """Set up this process: one process per GPU under torchrun/Slurm, or a single process.

    Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun) or SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID (srun), initialises ``torch.distributed`` with ``env://`` (NCCL on the GPU,
    gloo on the CPU) when there is more than one process.
    """
    _env_from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(local_rank, device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(rank, world, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------ random state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_rng_state() -> dict:
    """All random-number generator states of this process (python, numpy, torch, cuda)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
