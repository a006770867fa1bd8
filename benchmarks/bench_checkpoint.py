"""How long training waits for each checkpoint: a plain atomic torch.save vs BackgroundSaver.

    python -m benchmarks.bench_checkpoint             # pixmo_demo's state (about 200 MB)
    python -m benchmarks.bench_checkpoint --rounds 10

The state is what the Trainer writes every epoch for the pixmo_demo preset: the trainable
parameters (ResNet-34 layer4, encoder, head: 17.5 M) and their AdamW moments. A 20-epoch run
of about 10 s on an H100 cannot afford half a second per epoch of waiting for the disk.
Both sides alternate, with a pause standing in for an epoch, in one process; the figures
are the medians of the time the training loop is blocked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from kit.runs import BackgroundSaver, atomic_torch_save
from kit.trainer import TrainConfig, build_optimizer, trainable_state_dict
from model import PixMoModel


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epoch_seconds", type=float, default=1.0, help="pause between saves")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = PixMoModel(20).to(device)
    optimizer = build_optimizer(model.parameters(), TrainConfig(optimizer="adamw", lr=3e-4))
    model(torch.randn(2, 3, 64, 64, device=device)).sum().backward()
    optimizer.step()  # creates the AdamW moments

    def state():
        return {"model": trainable_state_dict(model), "optimizer": optimizer.state_dict()}

    blocked = {"sync": [], "background": []}
    saver = BackgroundSaver()
    with tempfile.TemporaryDirectory() as run_dir:
        for _ in range(args.rounds):
            start = time.perf_counter()
            atomic_torch_save(state(), os.path.join(run_dir, "sync.pt"))
            blocked["sync"].append(time.perf_counter() - start)
            start = time.perf_counter()
            saver.save(state(), os.path.join(run_dir, "background.pt"))
            blocked["background"].append(time.perf_counter() - start)
            time.sleep(args.epoch_seconds)
        saver.wait()
        size = os.path.getsize(os.path.join(run_dir, "background.pt"))
    median = {name: statistics.median(times) for name, times in blocked.items()}
    print(f"device {device}; checkpoint {size / 2**20:.0f} MiB; median time training is blocked:")
    print(f"  atomic torch.save  {median['sync'] * 1e3:7.1f} ms")
    print(f"  BackgroundSaver    {median['background'] * 1e3:7.1f} ms")
    print(f"  ratio              {median['sync'] / median['background']:7.1f}x")
    result = {"device": str(device), "bytes": size, "blocked_s": blocked, "median_s": median}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
