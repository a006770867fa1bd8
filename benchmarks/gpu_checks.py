"""Every CUDA path of the kit once, in one short call, with one JSON summary (issue 14).

    bash benchmarks/run_gpu_checks.sh quick             # on a GPU: at most 7 minutes
    bash benchmarks/run_gpu_checks.sh quick --cpu       # the same script on the CPU, tiny sizes
    python -m benchmarks.gpu_checks --parts flower_smoke,bench_vit_step   # only these parts
    python -m benchmarks.gpu_checks --list              # the parts and their time limits

The checks run side by side (phase 1), then the benchmarks one at a time so that nothing
disturbs their timings (phase 2):

    env                    GPU name, driver, torch / CUDA / cuDNN / NCCL versions, packages
    data_flowers           synthetic flowers for the demos and the flower benchmark (once)
    data_pixmo             synthetic PixMo at full size for the PixMo benchmark (once)
    flower_smoke           demo_flower.py  --exp_name flower_smoke,  bf16 and compile: true
    pixmo_smoke            demo_pixmo.py   --exp_name pixmo_smoke,   bf16 and compile: true
    scratch_smoke          demo_scratch.py --exp_name scratch_smoke, bf16 and compile: true
    torchrun_flower        flower_smoke under torchrun (one process)
    nccl_ddp               the kit's Trainer under DDP on one NCCL rank (random tensors)
    resume_flower          SIGTERM after the first epoch -> exit 75 and checkpoint.pt;
                           the same command with --resume finishes the run
    bench_vit_step         VPT-Deep step, ours vs torchvision, eager and compiled, peak memory
    bench_flower_pipeline  10 epochs of each side, PROJECTED to the 100-epoch recipe
    bench_pixmo_pipeline   10 epochs of each side, PROJECTED to the 20-epoch recipe
    bench_scratch          benchmarks/bench_scratch.py (Question 4)

The demos read a copy of config.yml whose ``*_smoke`` presets are changed (GPU: precision
bf16, compile true, device cuda; --cpu: fp32, no compile, device cpu, one epoch, less data),
passed with ``--config``; they run in a scratch folder (--workdir, default a temporary one)
where their synthetic data and run folders go. Every part has a time limit and the whole call
a budget (--budget; parts that no longer fit are reported as not run); a failing part never
stops the others. Results: ``gpu_checks.json`` (every figure, every failure with the tail of
its log) and ``gpu_checks.log`` (every part's output) in --out (default $OUT, else
gpu-checks/quick-<time>/); the JSON is rewritten after every part, so a call cut short keeps
what it measured. Exit status 0 when every part passed (or was absent from the checkout).
Figures from --cpu say nothing about the GPU targets.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SELF = ["-m", "benchmarks.gpu_checks"]  # this script, as its workers start it (cwd: ROOT)
KIT_PACKAGES = {  # import name -> distribution name (requirements.txt, plus what compile needs)
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "absl": "absl-py",
    "tqdm": "tqdm",
    "tensorboard": "tensorboard",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "triton": "triton",
}
FULL_EPOCHS = {"bench_flower_pipeline": 100, "bench_pixmo_pipeline": 20}
TARGETS = {  # on an H100 (issues 4 and 5); the H200 has the H100's arithmetic
    "bench_vit_step": "ours/torchvision speed >= 1.0x and peak memory <= 1.0x (eager, compiled)",
    "bench_flower_pipeline": ">= 10x per epoch, ours <= 60 s for the 100-epoch recipe",
    "bench_pixmo_pipeline": ">= 10x per epoch (original about 1.6 min for 20 epochs)",
}


# ====================================================================== parts


@dataclass
class Part:
    name: str
    phase: int  # 1: checks, side by side; 2: benchmarks, one at a time
    limit_gpu: float  # seconds
    limit_cpu: float
    run: Callable  # run(checker, part) -> (status, figures, reason)
    after: tuple = ()  # parts whose results this one needs
    what: str = ""


@dataclass
class Record:
    status: str = "pending"  # ok, failed, timeout, skipped (absent), not_run (budget/dependency)
    reason: str = ""
    wall_s: float = 0.0
    commands: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    log_tail: str = ""
    until: float = 0.0  # monotonic time at which the part is stopped (not reported)


class Checker:
    """Runs the parts, keeps their records and writes the JSON summary."""

    def __init__(self, args):
        self.args = args
        self.cpu = args.cpu
        self.py = sys.executable
        self.out = Path(args.out)
        self.work = Path(args.workdir)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.config = self.work / "config.yml"
        self.t0 = time.monotonic()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.deadline = self.t0 + args.budget
        self.phase_deadline = self.deadline
        self.records: dict[str, Record] = {}
        self.events: dict[str, threading.Event] = {}
        self.lock = threading.RLock()  # RLock: the SIGTERM handler may interrupt a holder
        self.procs: set = set()
        self.environment: dict = {}

    # ------------------------------------------------------------------ running commands

    def env(self, phase: int) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", VIT_OFFLINE="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if self.cpu:
            env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu means the CPU, even on a GPU machine
        if phase == 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.args.jobs))
        return env

    def start(self, part: Part, cmd: list, rec: Record) -> subprocess.Popen:
        rec.commands.append(" ".join(map(str, cmd)))
        log = open(self.logs / f"{part.name}.log", "a")
        log.write(f"$ {' '.join(map(str, cmd))}\n")
        log.flush()
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=self.work, env=self.env(part.phase), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,  # killpg reaches its children
        )  # fmt: skip
        log.close()  # the child holds its own copy
        with self.lock:
            self.procs.add(proc)
        return proc

    def wait(self, proc: subprocess.Popen, until: float) -> int | None:
        """The exit status, or None after killing the process group at ``until``."""
        try:
            return proc.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return None
        finally:
            with self.lock:
                self.procs.discard(proc)

    def call(self, part: Part, cmd: list, rec: Record, until: float) -> int | None:
        return self.wait(self.start(part, cmd, rec), until)

    # ------------------------------------------------------------------ parts and records

    def limit(self, part: Part) -> float:
        return part.limit_cpu if self.cpu else part.limit_gpu

    def run_part(self, part: Part) -> None:
        rec = self.records[part.name]
        try:
            for dep in part.after:
                if dep in self.events:
                    self.events[dep].wait(max(0.0, self.phase_deadline - time.monotonic()))
                    if self.records[dep].status != "ok":
                        rec.status, rec.reason = "not_run", f"needs {dep}, which did not pass"
                        return
            left = min(self.phase_deadline, self.deadline) - time.monotonic()
            if left < self.args.min_part_s:
                rec.status = "not_run"
                rec.reason = f"out of budget ({left:.0f} s left; rerun with --parts {part.name})"
                return
            rec.until = time.monotonic() + min(self.limit(part), left)
            start = time.monotonic()
            rec.status = "running"
            try:
                rec.status, rec.figures, rec.reason = part.run(self, part, rec)
            except Exception as err:  # a bug in a check must not stop the other checks
                rec.status, rec.reason = "failed", f"gpu_checks.py: {type(err).__name__}: {err}"
            rec.wall_s = round(time.monotonic() - start, 1)
        finally:
            self.finish(part, rec)

    def finish(self, part: Part, rec: Record) -> None:
        log = self.logs / f"{part.name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if rec.status not in ("ok", "skipped", "not_run"):
            rec.log_tail = tail(text)
        with self.lock:
            with open(self.out / "gpu_checks.log", "a") as f:
                f.write(f"===== {part.name}: {rec.status} {rec.reason} ({rec.wall_s} s)\n")
                f.write(text[-200_000:] + "\n")
            self.write_json()
        if part.name in self.events:
            self.events[part.name].set()
        print(f"[gpu_checks] {part.name:22s} {rec.status:8s} {rec.wall_s:6.1f} s  {rec.reason}",
              flush=True)  # fmt: skip

    def write_json(self, final: bool = False) -> None:
        parts = {}
        for name, rec in self.records.items():
            d = {k: v for k, v in vars(rec).items() if k != "until"}
            if not d["log_tail"]:
                del d["log_tail"]
            parts[name] = d
        bad = [n for n, r in self.records.items() if r.status not in ("ok", "skipped")]
        summary = {
            "what": "benchmarks/gpu_checks.py: every CUDA path of the kit once (issue 14)",
            "mode": "cpu (tiny sizes: NOT the GPU targets)" if self.cpu else "gpu",
            "finished": final,
            "started_utc": self.started,
            "wall_s": round(time.monotonic() - self.t0, 1),
            "budget_s": self.args.budget,
            "environment": self.environment,
            "parts": parts,
            "failures": {n: f"{self.records[n].status}: {self.records[n].reason}" for n in bad},
            "targets": self.targets(),
        }
        write_atomic(self.out / "gpu_checks.json", json.dumps(summary, indent=1) + "\n")

    def targets(self) -> dict:
        """Each benchmark's figures next to its target (H100 targets; met only on a GPU)."""
        out = {}
        for name, target in TARGETS.items():
            rec = self.records.get(name)
            if rec is None or rec.status != "ok":
                continue
            f, met = rec.figures, None
            if name == "bench_vit_step":
                ratios = f.get("ratios", {})
                met = all(
                    r["speed"] >= 1.0 and (r["peak_memory"] or 0) <= 1.0 for r in ratios.values()
                )
            elif "speedup_per_epoch" in f:
                met = f["speedup_per_epoch"] >= 10
                if name == "bench_flower_pipeline":
                    met = met and f["ours_projected_full_s"] <= 60
            out[name] = {
                "target": target,
                "met": None if self.cpu else met,
                "note": "CPU tiny run: not comparable" if self.cpu else f"on {self.gpu_name()}",
            }
        return out

    def gpu_name(self) -> str:
        return self.environment.get("gpu", {}).get("name", "?")


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    """The last lines of a log, each progress bar reduced to its last redraw."""
    rows = [r.rsplit("\r", 1)[-1] for r in text.splitlines()]
    return "\n".join([r for r in rows if r.strip()][-lines:])[-chars:]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


# ====================================================================== the checks


def run_env(c: Checker, part: Part, rec: Record):
    rc = c.call(part, [c.py, *SELF, "--worker", "env"], rec, rec.until)
    text = (c.logs / f"{part.name}.log").read_text(errors="replace")
    info = last_json_line(text)
    if rc != 0 or info is None:
        return "failed", {}, f"exit {rc}: torch did not import (see log_tail)"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"not available ({type(err).__name__})"
    c.environment = info
    gpu = info["gpu"].get("name")
    figs = {"gpu": gpu, "torch": info["torch"], "cuda": info["cuda"], "nccl": info.get("nccl")}
    missing = [name for name, v in info["packages"].items() if v == "MISSING"]
    if not c.cpu and not info["gpu"].get("available"):
        return "failed", figs, "no CUDA GPU visible to torch (use --cpu for the CPU check)"
    if set(missing) - {"triton"} or (missing and not c.cpu):
        return "failed", figs, (f"missing packages {', '.join(missing)}: carry their wheels "
                                "(see README, instructor-only speed paragraph)")  # fmt: skip
    return "ok", figs, ""


def env_worker() -> None:
    import importlib.metadata as md

    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "packages": {}}
    for module, dist in KIT_PACKAGES.items():
        try:
            __import__(module)
            info["packages"][dist] = md.version(dist)
        except ImportError:
            info["packages"][dist] = "MISSING"
        except md.PackageNotFoundError:
            info["packages"][dist] = "installed (version unknown)"
    import torch

    gpu = {"available": torch.cuda.is_available()}
    info["torch"], info["cuda"] = torch.__version__, torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if gpu["available"]:
        p = torch.cuda.get_device_properties(0)
        gpu.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                   bf16=torch.cuda.is_bf16_supported(), count=torch.cuda.device_count())  # fmt: skip
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
        gpu["bf16_matmul_ok"] = bool(torch.isfinite((a @ a).float()).all().item())
    info["gpu"] = gpu
    print(json.dumps(info))


def make_data_worker(kind: str, folder: str, tiny: bool) -> None:
    """The synthetic data the demos and the benchmarks would generate themselves."""
    if kind == "flowers":  # what demo_flower generates, and bench_flower_pipeline (seed 0)
        from kit.flower import synthetic as synthetic_flowers

        counts = {"train": 128, "val": 64, "test": 8} if tiny else None  # the bench's --tiny
        synthetic_flowers.generate(folder, seed=0, counts=counts)
    else:  # what bench_pixmo_pipeline generates (its --synthetic_dir reuses it)
        from kit.pixmo import synthetic as synthetic_pixmo

        sizes, sides = ((64, 32, 8), (60, 120)) if tiny else ((2500, 500, 500), (300, 700))
        synthetic_pixmo.generate(folder, sizes, *sides, seed=0)


def run_data(kind: str, folder: str):
    def run(c: Checker, part: Part, rec: Record):
        cmd = [c.py, *SELF, "--worker", f"data_{kind}", "--worker_dir", folder]
        rc = c.call(part, cmd + (["--cpu"] if c.cpu else []), rec, rec.until)
        if rc is None:
            return "timeout", {}, f"no data after {c.limit(part):.0f} s"
        return ("ok", {"folder": folder}, "") if rc == 0 else ("failed", {}, f"exit {rc}")

    return run


DEMOS = {  # part -> (script, preset, output file of a finished run)
    "flower_smoke": ("demo_flower.py", "flower_smoke", "test_flower.txt"),
    "pixmo_smoke": ("demo_pixmo.py", "pixmo_smoke", "test_pixmo.txt"),
    "scratch_smoke": ("demo_scratch.py", "scratch_smoke", "summary.json"),
}
EPOCH_LINE = re.compile(
    r"epoch (\d+)/(\d+)\s+lr \S+\s+train loss (\S+) acc (\S+)\s+val loss (\S+) acc (\S+)"
)


def demo_command(c: Checker, script: str, preset: str, run_dir: Path) -> list:
    return [ROOT / script, "--exp_name", preset, "--output_dir", run_dir, "--config", c.config]


def demo_figures(c: Checker, run_dir: Path, output: str) -> tuple[dict, str]:
    """What a finished demo run shows (figures) and what is wrong with it ("" if nothing)."""
    log = (run_dir / "train.log").read_text(errors="replace") if run_dir.is_dir() else ""
    epochs = EPOCH_LINE.findall(log)
    figs: dict = {"run_dir": str(run_dir)}
    where = re.search(r"(\d+) process\(es\) on (\S+)", log)
    if where:
        figs["processes"], figs["device"] = int(where.group(1)), where.group(2)
    if epochs:
        done, total, train_loss, train_acc, _, val_acc = epochs[-1]
        figs.update(epochs=f"{done}/{total}", final_train_loss=float(train_loss),
                    final_val_acc=float(val_acc))  # fmt: skip
    seconds = re.findall(r"done in ([\d.]+)s", log)
    if seconds:
        figs["demo_seconds"] = float(seconds[-1])
    try:
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        figs.update({k: saved.get(k) for k in ("precision", "compile", "compile_mode", "device")})
        figs["synthetic_data"] = saved.get("synthetic_data")
    except Exception:  # no or unreadable config.yaml: the checks below say what is wrong
        pass
    if output == "summary.json" and (run_dir / output).is_file():
        figs["summary"] = json.loads((run_dir / output).read_text())
    if not (run_dir / output).is_file():
        return figs, f"no {output} in the run folder"
    if not epochs:
        return figs, "no epoch line in train.log"
    if not c.cpu and not str(figs.get("device", "")).startswith("cuda"):
        return figs, f"ran on {figs.get('device')}, not on the GPU"
    return figs, ""


def run_demo_part(name: str):
    script, preset, output = DEMOS[name]

    def run(c: Checker, part: Part, rec: Record):
        if not (ROOT / script).is_file():
            return "skipped", {}, f"{script} is not in this checkout"
        run_dir = c.work / "runs" / name
        rc = c.call(part, [c.py, *demo_command(c, script, preset, run_dir)], rec, rec.until)
        return verdict(c, part, rc, *demo_figures(c, run_dir, output))

    return run


def verdict(c: Checker, part: Part, rc, figs: dict, problem: str):
    if rc is None:
        return "timeout", figs, f"killed after its limit ({c.limit(part):.0f} s or the budget)"
    if rc != 0:
        return "failed", figs, f"exit {rc}"
    return ("failed", figs, problem) if problem else ("ok", figs, "")


def torchrun(c: Checker) -> list:
    return [c.py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]


def run_torchrun_flower(c: Checker, part: Part, rec: Record):
    run_dir = c.work / "runs" / part.name
    cmd = torchrun(c) + demo_command(c, "demo_flower.py", "gpu_checks_graphs", run_dir)
    rc = c.call(part, cmd, rec, rec.until)
    figs, problem = demo_figures(c, run_dir, "test_flower.txt")
    figs["note"] = ("flower_smoke with compile_mode reduce-overhead (CUDA graphs) on the GPU; "
                    "one process, so the kit starts no process group (nccl_ddp checks NCCL)")  # fmt: skip
    return verdict(c, part, rc, figs, problem)


def run_nccl_ddp(c: Checker, part: Part, rec: Record):
    run_dir = c.work / "runs" / part.name
    cmd = torchrun(c) + [*SELF, "--worker", "ddp", "--worker_dir", run_dir]
    rc = c.call(part, cmd + (["--cpu"] if c.cpu else []), rec, rec.until)
    figs = last_json_line((c.logs / f"{part.name}.log").read_text(errors="replace")) or {}
    return verdict(c, part, rc, figs, "" if figs else "no summary line from the worker")


def ddp_worker(run_dir: str, cpu: bool) -> None:
    """The kit's Trainer with DDP (and, on the GPU, compile and bf16) on one rank: the kit
    itself starts a process group only for several processes, which one GPU cannot hold."""
    import torch
    import torch.distributed as dist

    from fine_tune import ViTPrompt
    from kit.device_batches import ImageBatchSource
    from kit.distributed import DistContext, init_distributed
    from kit.runs import setup_logging
    from kit.trainer import TrainConfig, Trainer

    class OneRankDDP(DistContext):
        @property
        def distributed(self) -> bool:  # DDP, all-reduce and gathered RNG states at 1 rank
            return True

    base = init_distributed("cpu" if cpu else "cuda")
    dist.init_process_group("gloo" if cpu else "nccl", init_method="env://")
    ctx = OneRankDDP(base.rank, base.world_size, base.local_rank, base.device)
    probe = torch.full((1,), 3.0, device=ctx.device)
    dist.all_reduce(probe)
    torch.manual_seed(0)
    print("RANDOM tensors as data: a plumbing check of DDP, not a result", flush=True)
    store = torch.randint(0, 256, (256, 3, 36, 36), dtype=torch.uint8, device=ctx.device)
    labels = torch.randint(0, 10, (256,), device=ctx.device)
    common = dict(crop=32, channels_last=not cpu)
    train = ImageBatchSource(store, labels, batch_size=64, train=True, **common)
    val = ImageBatchSource(store[:128, :, 2:34, 2:34].contiguous(), labels[:128], batch_size=128,
                           train=False, **common)  # fmt: skip
    model = ViTPrompt(10, "vit_tiny_test", num_prompts=4, weights=None, image_size=32,
                      log=lambda _: None).to(ctx.device)  # fmt: skip
    cfg = TrainConfig(epochs=2, optimizer="adamw", lr=1e-3, scheduler="cosine",
                      precision="fp32" if cpu else "bf16", compile=not cpu)  # fmt: skip
    Path(run_dir).mkdir(parents=True)
    trainer = Trainer(model, train, val, run_dir, cfg, dist_ctx=ctx,
                      logger=setup_logging(Path(run_dir), True, name="nccl_ddp"))  # fmt: skip
    result = trainer.fit()
    wrapped = getattr(trainer.train_model, "_orig_mod", trainer.train_model)
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    summary = {
        "backend": dist.get_backend(),
        "nccl": None if cpu else ".".join(map(str, torch.cuda.nccl.version())),
        "world_size": dist.get_world_size(),
        "all_reduce_ok": probe.item() == 3.0,
        "ddp": isinstance(wrapped, torch.nn.parallel.DistributedDataParallel),
        "compile": cfg.compile,
        "precision": cfg.precision,
        "epochs": len(result["history"]),
        "checkpoint_rng_states": len(ckpt["rng"]),
        "data": "RANDOM tensors (plumbing check)",
    }
    dist.destroy_process_group()
    print(json.dumps(summary))
    if not (summary["ddp"] and summary["all_reduce_ok"] and summary["epochs"] == 2):
        sys.exit(f"error: DDP check failed: {summary}")


def run_resume(c: Checker, part: Part, rec: Record):
    """SIGTERM once epoch 1 is logged (the run is then in epoch 2): expect exit 75 and
    checkpoint.pt; the same command with --resume must finish every epoch."""
    run_dir = c.work / "runs" / part.name
    cmd = [c.py, *demo_command(c, "demo_flower.py", "gpu_checks_resume", run_dir)]
    proc = c.start(part, cmd, rec)
    start, signalled = time.monotonic(), None
    while proc.poll() is None and time.monotonic() < rec.until:
        log = run_dir / "train.log"
        if log.is_file() and "epoch 1/" in log.read_text(errors="replace"):
            proc.send_signal(signal.SIGTERM)
            signalled = round(time.monotonic() - start, 1)
            break
        time.sleep(0.1)
    rc = c.wait(proc, rec.until)
    figs = {"sigterm_after_s": signalled, "first_exit": rc}
    text = (c.logs / f"{part.name}.log").read_text(errors="replace")
    # "stopped by SIGTERM: checkpoint.pt written at epoch 1 of 6, step 3 of 4; continue ..."
    stop = re.findall(r"checkpoint\.pt written at (.+?);", text)
    figs["stopped"] = stop[-1] if stop else None
    if rc is None:
        return "timeout", figs, "the first run did not stop in time"
    if signalled is None:
        return "failed", figs, f"the run ended (exit {rc}) before its first epoch was logged"
    if rc != 75 or not (run_dir / "checkpoint.pt").is_file():
        return "failed", figs, f"after SIGTERM: exit {rc} (expected 75 and checkpoint.pt)"
    rc = c.call(part, cmd + ["--resume"], rec, rec.until)
    more, problem = demo_figures(c, run_dir, "test_flower.txt")
    log = (run_dir / "train.log").read_text(errors="replace")
    # "resumed from RUN/checkpoint.pt at epoch 1 of 6, step 3 of 4" (the same words as the stop)
    resumed = re.findall(r"resumed from \S+ at (.+)$", log, flags=re.M)
    figs.update(more, resumed_from=resumed[-1] if resumed else None, second_exit=rc)
    done, _, total = figs.get("epochs", "/").partition("/")
    if not problem and not resumed:
        problem = "train.log has no 'resumed from' line"
    elif not problem and done != total:
        problem = f"the resumed run stopped at epoch {figs['epochs']}"
    return verdict(c, part, rc, figs, problem)


# ====================================================================== the benchmarks


def bench_args(c: Checker, name: str) -> list:
    pixmo_data = c.work / "synthetic-data" / "pixmo_bench"
    flower_data = c.work / "synthetic-data" / "flower-dataset-reduced"
    if name == "bench_vit_step":
        return ["--tiny", "--modes", "eager", "--steps", "2", "--warmup", "1"] if c.cpu else []
    data = flower_data if name == "bench_flower_pipeline" else pixmo_data
    epochs = ["--epochs", "2", "--original_epochs", "1", "--workers", "0"] if c.cpu else [
        "--epochs", "10", "--original_epochs", "10"]  # fmt: skip
    return (["--tiny"] if c.cpu else []) + epochs + ["--synthetic_dir", data]


def run_bench(name: str):
    script = BENCH / f"{name}.py"

    def run(c: Checker, part: Part, rec: Record):
        if not script.is_file():
            return "skipped", {}, f"benchmarks/{script.name} is not in this checkout"
        out = c.work / f"{name}.json"
        own = name in ("bench_vit_step", *FULL_EPOCHS)
        takes_json = own or "--json" in script.read_text(errors="replace")
        args = bench_args(c, name) if own else (["--tiny"] if c.cpu else [])
        module = f"benchmarks.{name}"
        cmd = [c.py, "-m", module, *args] + (["--json", out] if takes_json else [])
        rc = c.call(part, cmd, rec, rec.until)
        if out.is_file():
            figs = json.loads(out.read_text())
        else:  # every benchmark of the kit prints its summary as the last JSON line
            figs = last_json_line((c.logs / f"{part.name}.log").read_text(errors="replace"))
        if rc == 0 and name in FULL_EPOCHS and figs:
            figs = project(figs, FULL_EPOCHS[name])
        return verdict(c, part, rc, figs or {}, "" if figs else "no JSON summary found")

    return run


def project(figs: dict, full: int) -> dict:
    """Flatten a pipeline benchmark's summary and project both sides to ``full`` epochs."""
    res, epochs = figs.get("results", {}), figs["epochs"]
    out = {k: v for k, v in figs.items() if k != "results"}
    ours, orig = res.get("ours"), res.get("original")
    if ours:
        per_epoch = (ours["seconds"] - ours["prep_seconds"]) / epochs
        out.update(ours_seconds=ours["seconds"], ours_epochs=epochs,
                   ours_prep_seconds=ours["prep_seconds"], ours_final_val_acc=ours["final_val_acc"],
                   ours_projected_full_s=ours["prep_seconds"] + per_epoch * full)  # fmt: skip
    if orig:
        out.update(original_seconds=orig["seconds"], original_epochs=orig["epochs"],
                   original_workers=orig.get("workers"),
                   original_projected_full_s=orig["seconds"] / orig["epochs"] * full)  # fmt: skip
    if "speedup_per_epoch" in res:
        out["speedup_per_epoch"] = res["speedup_per_epoch"]
    if ours or orig:
        out["projection"] = (
            f"PROJECTED to the {full}-epoch recipe from {epochs} epochs of ours and "
            f"{orig['epochs'] if orig else '-'} of the original: linear in epochs; ours counts "
            "its one-off preprocessing once and its compile warm-up in every epoch (an "
            "overestimate)"
        )
    return out


# ====================================================================== the plan

# Time limits in seconds (GPU, CPU): on a GPU the sum of the slowest check and the benchmarks
# must stay under the 420 s budget; the CPU limits only keep a stuck --cpu run from hanging CI.
# fmt: off
PARTS = [
    Part("env", 0, 90, 120, run_env, what="versions, GPU, packages"),
    Part("data_flowers", 1, 150, 120, run_data("flowers", "synthetic-data/flower-dataset-reduced"),
         what="synthetic flowers (demos + flower benchmark)"),
    Part("data_pixmo", 1, 200, 120, run_data("pixmo", "synthetic-data/pixmo_bench"),
         what="synthetic PixMo for its benchmark"),
    Part("flower_smoke", 1, 180, 240, run_demo_part("flower_smoke"), ("data_flowers",),
         what="demo_flower.py flower_smoke, bf16 + compile"),
    Part("pixmo_smoke", 1, 180, 240, run_demo_part("pixmo_smoke"),
         what="demo_pixmo.py pixmo_smoke, bf16 + compile"),
    Part("scratch_smoke", 1, 180, 240, run_demo_part("scratch_smoke"),
         what="demo_scratch.py scratch_smoke, bf16 + compile"),
    Part("torchrun_flower", 1, 180, 240, run_torchrun_flower, ("data_flowers",),
         what="flower_smoke under torchrun, 1 process, CUDA graphs"),
    Part("nccl_ddp", 1, 150, 240, run_nccl_ddp, what="Trainer under DDP on one NCCL rank"),
    Part("resume_flower", 1, 180, 300, run_resume, ("data_flowers",),
         what="SIGTERM -> exit 75 + checkpoint.pt; --resume finishes"),
    Part("bench_vit_step", 2, 120, 240, run_bench("bench_vit_step"),
         what="ViT step, eager + compiled, peak memory"),
    Part("bench_flower_pipeline", 2, 180, 300, run_bench("bench_flower_pipeline"),
         what="10 epochs each side, PROJECTED to 100"),
    Part("bench_pixmo_pipeline", 2, 150, 400, run_bench("bench_pixmo_pipeline"),
         what="10 epochs each side, PROJECTED to 20"),
    Part("bench_scratch", 2, 120, 300, run_bench("bench_scratch"), what="Question 4 throughput"),
]
# fmt: on


def smoke_config(cpu: bool) -> str:
    """config.yml with every ``*_smoke`` preset set for this check, plus the resume preset."""
    import yaml

    data = yaml.safe_load((ROOT / "config.yml").read_text())
    for section, presets in data.items():
        for name in [n for n in presets if n.endswith("_smoke")]:
            p = dict(presets[name] or {})
            if cpu:
                p.update(precision="fp32", compile=False, device="cpu", epochs=1)
                if section == "pixmo":
                    p.update(synthetic_sizes=[32, 16, 16], bn_calibration_images=16)
            else:
                p.update(precision="bf16", compile=True, device="cuda")
            presets[name] = p
    flower = data["flower"]
    flower["gpu_checks_resume"] = dict(flower["flower_smoke"], epochs=8 if cpu else 40)
    graphs = "default" if cpu else "reduce-overhead"  # CUDA graphs, on the GPU only
    flower["gpu_checks_graphs"] = dict(flower["flower_smoke"], compile_mode=graphs)
    head = "# Written by benchmarks/gpu_checks.py: config.yml with its smoke presets changed.\n"
    return head + yaml.safe_dump(data, sort_keys=False)


def select(names: str | None) -> list[Part]:
    by_name = {p.name: p for p in PARTS}
    if not names:
        return list(PARTS)
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - set(by_name)
    if unknown:
        sys.exit(f"error: unknown part(s) {', '.join(sorted(unknown))}; see --list")
    for name in list(wanted):  # a part's data comes along
        wanted.update(by_name[name].after)
    wanted.add("env")
    return [p for p in PARTS if p.name in wanted]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (a CI check)")
    parser.add_argument("--parts", default=None, help="comma list of parts (default: all)")
    parser.add_argument("--list", action="store_true", help="print the parts and exit")
    parser.add_argument("--out", default=None, help="results folder (default $OUT or "
                        "gpu-checks/quick-<time>)")  # fmt: skip
    parser.add_argument(
        "--workdir", default=None, help="scratch folder, kept (default: a temporary one, removed)"
    )
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole call (default 420 on a GPU, 1500 on --cpu)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=None, help="checks run side by side")
    parser.add_argument("--min_part_s", type=float, default=15.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "env":
        return env_worker()
    if args.worker in ("data_flowers", "data_pixmo"):
        return make_data_worker(args.worker[5:], args.worker_dir, args.cpu)
    if args.worker == "ddp":
        return ddp_worker(args.worker_dir, args.cpu)
    if args.list:
        for p in PARTS:
            print(f"{p.name:22s} phase {p.phase}  {p.limit_gpu:4.0f} s GPU / "
                  f"{p.limit_cpu:4.0f} s CPU  {p.what}")  # fmt: skip
        return 0

    parts = select(args.parts)
    args.budget = args.budget or (1500.0 if args.cpu else 420.0)
    args.jobs = args.jobs or max(1, min(8, os.cpu_count() or 1))
    if args.out is None:
        default = Path("gpu-checks") / time.strftime("quick-%Y%m%d-%H%M%S")
        args.out = os.environ.get("OUT") or str(ROOT / default)
    out = Path(args.out)
    if (out / "gpu_checks.json").exists():
        sys.exit(f"error: {out}/gpu_checks.json exists; choose another --out or move it away")
    out.mkdir(parents=True, exist_ok=True)
    own_work = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="gpu_checks_")
    if (Path(args.workdir) / "runs").exists():
        sys.exit(f"error: {args.workdir} already holds runs/; give an empty --workdir")
    c = Checker(args)
    write_atomic(c.config, smoke_config(args.cpu))
    c.records = {p.name: Record() for p in parts}
    c.events = {p.name: threading.Event() for p in parts}
    print(f"[gpu_checks] {'CPU (tiny sizes)' if c.cpu else 'GPU'} run of "
          f"{', '.join(p.name for p in parts)}; budget {args.budget:.0f} s; results in {out}; "
          f"scratch folder {c.work}", flush=True)  # fmt: skip

    def on_term(signum, _frame):  # the caller's time limit: keep what was measured
        with c.lock:
            for proc in list(c.procs):
                kill_group(proc)
            for rec in c.records.values():
                if rec.status in ("pending", "running"):
                    rec.status, rec.reason = "not_run", f"gpu_checks.py stopped by signal {signum}"
            c.write_json(final=True)
        if own_work:
            shutil.rmtree(c.work, ignore_errors=True)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    try:
        # On a GPU, env runs alone first: without a GPU every other part would fail alike.
        for phases in [(0, 1), (2,)] if c.cpu else [(0,), (1,), (2,)]:
            phase = phases[-1]
            todo = [p for p in parts if p.phase in phases]
            # the checks may use about half the budget; the benchmarks get the rest
            c.phase_deadline = c.t0 + 0.45 * args.budget if phase < 2 else c.deadline
            no_gpu = not c.environment.get("gpu", {}).get("available")
            if phase == 1 and no_gpu and not c.cpu:
                for p in parts[1:]:
                    c.records[p.name].status = "not_run"
                    c.records[p.name].reason = "the env part failed: " + c.records["env"].reason
                break
            if phase == 1:
                with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                    futures = [pool.submit(c.run_part, p) for p in todo]
                    while not all(f.done() for f in futures):
                        time.sleep(0.5)  # stay interruptible by SIGTERM
            else:
                for p in todo:
                    c.run_part(p)
    finally:
        c.write_json(final=True)
        if own_work:
            shutil.rmtree(c.work, ignore_errors=True)
    bad = [n for n, r in c.records.items() if r.status not in ("ok", "skipped")]
    print(f"[gpu_checks] {len(parts) - len(bad)}/{len(parts)} parts passed or absent in "
          f"{time.monotonic() - c.t0:.0f} s; summary {out / 'gpu_checks.json'}"
          + (f"; FAILED: {', '.join(bad)}" if bad else ""), flush=True)  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
