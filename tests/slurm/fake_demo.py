"""A stand-in for demo_flower.py / demo_pixmo.py that follows the same command-line contract.

The sbatch tests use it to check the scripts' own logic (arguments, resume, signal
forwarding, requeue, torchrun) in seconds, independently of the real demos:

    python fake_demo.py --exp_name NAME --output_dir DIR [--data_dir D] [--resume]

It "trains" for ``FAKE_STEPS`` steps of ``FAKE_STEP_SECONDS`` each, writes config.yaml,
checkpoint.pt (a text file holding the next step) and test_fake.txt, refuses an existing
run without --resume, and on SIGTERM/SIGUSR1 saves the checkpoint and exits with 75.
Every start is appended to ``starts.txt`` (rank, world size, resumed or not, start step).
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

stop_requested = False


def request_stop(signum, frame):
    global stop_requested
    stop_requested = True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exp_name", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGUSR1, request_stop)

    out = Path(args.output_dir)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    checkpoint = out / "checkpoint.pt"
    existing = (out / "config.yaml").exists() or checkpoint.exists()
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        print(f"error: data folder {args.data_dir} not found", file=sys.stderr)
        return 2
    if existing and not args.resume and rank == 0:
        print(f"error: {out} holds a run already; pass --resume", file=sys.stderr)
        return 2
    if args.resume and not checkpoint.exists():
        print(f"error: --resume but {checkpoint} is missing", file=sys.stderr)
        return 2
    step = int(checkpoint.read_text()) if args.resume else 0
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / "config.yaml").write_text(f"exp_name: {args.exp_name}\ndata_dir: {args.data_dir}\n")
        with open(out / "starts.txt", "a") as log:
            log.write(
                f"rank={rank} world={world} resume={args.resume} step={step} "
                f"cuda={os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
                f"omp={os.environ.get('OMP_NUM_THREADS', '')}\n"
            )
    else:
        with open(out / f"starts_rank{rank}.txt", "a") as log:
            log.write(f"rank={rank} world={world}\n")
    steps = int(os.environ.get("FAKE_STEPS", "5"))
    seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0.2"))
    print(f"fake demo: rank {rank}/{world} starting at step {step} of {steps}", flush=True)
    while step < steps:
        time.sleep(seconds)
        step += 1
        if stop_requested:
            if rank == 0:
                checkpoint.write_text(str(step))
            print(f"fake demo: stopping at step {step}, checkpoint written", flush=True)
            return 75
    if rank == 0:
        checkpoint.write_text(str(step))
        (out / "test_fake.txt").write_text("\n".join(str(i % 3) for i in range(10)) + "\n")
    print("fake demo: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
