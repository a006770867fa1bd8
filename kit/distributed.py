"""Who this process is and what it runs on: devices, torchrun/Slurm processes, seeds.

- ``init_distributed``: one process per GPU under torchrun or ``srun`` (their environment
  variables), ``env://`` rendezvous, NCCL on GPUs and gloo on CPUs; a plain single process
  otherwise. Returns a ``DistContext`` (rank, world size, device).
- ``seed_everything`` and the random-number state of every generator (python, numpy, torch,
  CUDA), which checkpoints carry so that a resumed run continues exactly.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from kit.errors import UserError


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
