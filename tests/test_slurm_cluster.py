"""flower.sbatch, pixmo.sbatch and scratch.sbatch on a real (local, single-node) Slurm cluster.

Needs Debian's slurm-wlm and munge (``bash tests/slurm/install_slurm.sh``) and root; without
them every test here is skipped with the reason. The cluster (tests/slurm/local_cluster.py)
has a GPU resource bound to /dev/null, so the scripts' ``--gpus=1`` jobs run, on the CPU.

The jobs run in a copy of the kit, on the synthetic data the demos generate. They are all
submitted at once and Slurm runs them in this order (dependencies), 4-10 minutes on a
2-core machine:

1. the README's flower smoke command, next to 2. the README's pixmo smoke command;
3. after 1: the flower smoke preset on two processes (``--gpus=2``: torchrun, gloo on CPU);
4. after 1: a longer flower run (the smoke preset for more epochs), uninterrupted;
5. after 1: the same run with a 1-minute time limit, so the job gets the warning signal,
   checkpoints, requeues itself and resumes until done; its predictions must equal job 4's.

6. last, once every job above has ended: the README's Question 4 smoke command (scratch.sbatch).
   It is submitted only then because a third real demo next to the others starves them of
   the two CPUs and their time limits (the requeue test's 1 minute) stop meaning anything.

Next to them, small jobs with tests/slurm/fake_demo.py check that ``scancel`` is not undone
by a requeue, and that a missing ``--output`` folder fails the job (why the README mkdirs).
"""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from kit_files import copy_kit, readme_block_for
from local_cluster import LocalSlurm, SlurmUnavailable, unavailable_reason

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAKE_DEMO = Path(__file__).parent / "slurm" / "fake_demo.py"
SMALL = ["--cpus-per-task=1", "--mem=1G"]  # fake-demo jobs fit next to the real ones
TEST_FILES = {
    "flower": "test_flower.txt",
    "pixmo": "test_pixmo.txt",
    "scratch": "test_predictions.txt",
}
# The synthetic test set each demo generates; a preset smaller than the real data set writes
# to a folder named with its sizes (e.g. pixmo_data-60-20-20-...), hence the patterns.
SYNTHETIC = {
    "flower": "flower-dataset-reduced*/test_data.pkl",
    "pixmo": "pixmo_data*/test_data.pkl",
    "scratch": "cifar-10-batches-py*/test_batch",
}
WAIT = 900  # seconds; generous for a busy 2-core CI machine
# Job 4: a 1-minute limit with the warning 10 s before it (the script's own timer; Slurm's
# comes from a periodic check, up to ~30 s earlier). The demo must have imported torch by
# then (its handler is installed when main() starts; a signal during start-up is kept and
# acted on at the first training step).
WARN = 10
# flower_smoke alone takes 10-25 s here, too short for a 1-minute limit: the requeue test runs
# it for more epochs (a preset added to the test's copy of config.yml), twice. 30 epochs were
# enough under load but finished inside the limit on a quiet machine; an epoch takes 0.4-2 s,
# so 200 epochs outlast the limit everywhere and still end within WAIT.
LONG_PRESET = "flower_smoke_long_test"
LONG_EPOCHS = 200


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"Slurm tests skipped: {reason}")
    try:
        slurm = LocalSlurm.start()
    except SlurmUnavailable as err:
        pytest.skip(f"Slurm tests skipped: the local cluster did not start: {err}")
    yield slurm
    slurm.stop()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A copy of the kit whose config.yml (the copy's) also has LONG_PRESET."""
    kit = copy_kit(tmp_path_factory.mktemp("kit"))
    config = yaml.safe_load((kit / "config.yml").read_text())
    smoke = config["flower"]["flower_smoke"]
    config["flower"][LONG_PRESET] = {**smoke, "epochs": LONG_EPOCHS}
    (kit / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return kit


def submit_readme(cluster: LocalSlurm, kit: Path, exp_name: str) -> str:
    """Run the README's block for ``exp_name``, line by line as a student would; the job id."""
    job_id = None
    for line in readme_block_for(exp_name).strip().splitlines():
        result = subprocess.run(
            ["bash", "-c", line], cwd=kit, env=cluster.env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"README command failed: {line}\n{result.stderr}"
        found = re.search(r"Submitted batch job (\d+)", result.stdout)
        job_id = found.group(1) if found else job_id
    assert job_id, f"the README block for {exp_name} submitted no job"
    return job_id


@pytest.fixture(scope="module")
def jobs(cluster, kit):
    """Submit the jobs (see the module docstring); {name: (job id, run dir)}."""
    flower = submit_readme(cluster, kit, "flower_smoke")
    pixmo = submit_readme(cluster, kit, "pixmo_smoke")
    submitted = {
        "flower": (flower, kit / "runs_flower" / "flower_smoke"),
        "pixmo": (pixmo, kit / "runs_pixmo" / "pixmo_smoke"),
    }
    after_flower = f"--dependency=afterany:{flower}"  # its synthetic data exists by then
    extra = {
        # The same command with --gpus=2 (what the README says for several GPUs).
        "two": ("flower_smoke", ["--gpus=2", after_flower], ""),
        # A run longer than 1 minute, uninterrupted and with a 1-minute limit.
        "reference": (LONG_PRESET, [after_flower], ""),
        "requeue": (
            LONG_PRESET,
            ["--time=1", f"--signal=B:USR1@{WARN}", after_flower],
            f",WARN_SECONDS={WARN}",
        ),
    }
    for name, (preset, options, more_env) in extra.items():
        run = kit / "runs_flower" / name
        run.mkdir(parents=True)
        job = cluster.sbatch(
            [
                *options,
                f"--export=ALL,OUTPUT_DIR=runs_flower/{name},EXP_NAME={preset}{more_env}",
                f"--output=runs_flower/{name}/%j.out",
                f"--error=runs_flower/{name}/%j.err",
                "flower.sbatch",
            ],
            cwd=kit,
        )
        submitted[name] = (job, run)
    return submitted


def finished(cluster: LocalSlurm, job: str, run: Path) -> dict:
    """Wait for the job; fail with its logs unless it COMPLETED with exit code 0."""
    info = cluster.wait(job, timeout=WAIT)
    if info.get("JobState") != "COMPLETED" or info.get("ExitCode") != "0:0":
        logs = "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(run.glob("*"))
            if p.suffix in (".out", ".err", ".log")
        )
        pytest.fail(f"job {job}: {info.get('JobState')} exit {info.get('ExitCode')}\n{logs}")
    return info


def check_run_dir(run: Path, job: str, demo: str) -> list[str]:
    """The run folder holds everything the contract promises; returns the predictions."""
    for name in ("config.yaml", "train.log", "checkpoint.pt", "best.pt", f"slurm-{job}.log"):
        assert (run / name).is_file(), f"{run}/{name} missing"
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"
    assert (run / f"{job}.out").is_file() and (run / f"{job}.err").is_file()
    log = (run / f"slurm-{job}.log").read_text()
    assert "SYNTHETIC" in log, "the synthetic-data banner must reach the job's log"
    lines = (run / TEST_FILES[demo]).read_text().split("\n")
    assert lines[0].startswith("# SYNTHETIC DATA"), "synthetic predictions must say so"
    preds = [p for p in lines[1:] if p]
    assert len(preds) == n_test_images(run.parents[1], demo)
    assert all(p.lstrip("-").isdigit() for p in preds)
    return preds


def n_test_images(kit: Path, demo: str) -> int:
    """Size of the synthetic test set the demo generated (flowers: (X, y); PixMo: a list;
    CIFAR-10: the official pickle, a dict with b"labels")."""
    found = sorted((kit / "synthetic-data").glob(SYNTHETIC[demo]))
    assert len(found) == 1, f"expected one synthetic {demo} test set, found {found}"
    with open(found[0], "rb") as f:
        data = pickle.load(f, encoding="bytes")
    if demo == "scratch":
        return len(data[b"labels"])
    return len(data[1]) if demo == "flower" else len(data)


# ---------------------------------------------------------------- the scripts' own behaviour
# (fake demo, small jobs that run next to the real ones above)


@pytest.fixture(scope="module")
def fake_kit(tmp_path_factory):
    kit = tmp_path_factory.mktemp("fake_kit")
    for name in ("flower.sbatch", "cluster_site.sh"):
        shutil.copy(Path(__file__).parents[1] / name, kit / name)
    shutil.copy(FAKE_DEMO, kit / "demo_flower.py")
    return kit


def test_scancel_is_not_requeued(cluster, jobs, fake_kit):
    (fake_kit / "runs" / "c").mkdir(parents=True)
    job = cluster.sbatch(
        [
            *SMALL,
            "--export=ALL,OUTPUT_DIR=runs/c,EXP_NAME=x,FAKE_STEPS=3000,FAKE_STEP_SECONDS=0.1",
            "--output=runs/c/%j.out",
            "--error=runs/c/%j.err",
            "flower.sbatch",
        ],
        cwd=fake_kit,
    )
    run = fake_kit / "runs" / "c"
    for _ in range(120):  # until the fake demo runs
        if (run / "starts.txt").exists():
            break
        time.sleep(1)
    cluster.run(["scancel", job])
    cluster.wait(job, timeout=60)
    time.sleep(15)  # a requeued job would be pending again by now
    info = cluster.job_info(job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    out = (run / f"{job}.out").read_text()
    assert "not requeued" in out and (run / "checkpoint.pt").exists()


def test_missing_output_folder_fails_without_a_log(cluster, jobs, fake_kit):
    """Why the README says mkdir first: Slurm does not create the --output folder."""
    job = cluster.sbatch(
        [
            *SMALL,
            "--export=ALL,OUTPUT_DIR=runs/none,EXP_NAME=x",
            "--output=runs/none/%j.out",
            "--error=runs/none/%j.err",
            "flower.sbatch",
        ],
        cwd=fake_kit,
    )
    info = cluster.wait(job, timeout=120)
    assert info["JobState"] == "FAILED" and not (fake_kit / "runs" / "none").exists()


# ---------------------------------------------------------------- the real demos


def test_readme_flower_command_runs(cluster, jobs):
    job, run = jobs["flower"]
    info = finished(cluster, job, run)
    assert info["Restarts"] == "0"
    check_run_dir(run, job, "flower")
    out = (run / f"{job}.out").read_text()
    # --gpus=1 on a GPU-less node: Slurm hands out the /dev/null "GPU" and the demo uses the CPU.
    assert "GPUs: 0;" in out and "processes: 1;" in out


def test_readme_pixmo_command_runs(cluster, jobs):
    job, run = jobs["pixmo"]
    finished(cluster, job, run)
    check_run_dir(run, job, "pixmo")


def test_two_processes_with_torchrun(cluster, jobs):
    job, run = jobs["two"]
    finished(cluster, job, run)
    check_run_dir(run, job, "flower")
    out = (run / f"{job}.out").read_text()
    assert re.search(r"GPUs: \d+,\d+;", out) and "processes: 2;" in out
    assert "torch.distributed.run --standalone --nproc_per_node=2" in out
    assert "2 process(es)" in (run / "train.log").read_text()


def test_time_limit_checkpoint_requeue_resume(cluster, jobs):
    job, run = jobs["requeue"]
    info = finished(cluster, job, run)
    assert int(info["Restarts"]) >= 1, (
        "the job finished without being requeued: the flower_smoke preset now runs shorter "
        "than the 1-minute limit, so this test no longer exercises the requeue"
    )
    out = (run / f"{job}.out").read_text()
    assert "caught SIGUSR1" in out
    assert "checkpoint saved (status 75)" in out, "the demo must exit with 75 after its checkpoint"
    assert f"requeued job {job}" in out
    assert "--resume" in out, "the requeued job must resume from the checkpoint"
    preds = check_run_dir(run, job, "flower")
    ref_job, ref_run = jobs["reference"]
    assert finished(cluster, ref_job, ref_run)["Restarts"] == "0"
    reference = check_run_dir(ref_run, ref_job, "flower")
    assert preds == reference, "resumed run must predict exactly like the uninterrupted one"


def test_readme_scratch_command_runs(cluster, kit, jobs):
    """Question 4's README command, alone on the cluster (see the module docstring)."""
    for job, _run in jobs.values():
        cluster.wait(job, timeout=WAIT)  # ended, whatever its state: the tests above judge it
    job = submit_readme(cluster, kit, "scratch_smoke")
    run = kit / "runs_scratch" / "scratch_smoke"
    assert finished(cluster, job, run)["Restarts"] == "0"
    check_run_dir(run, job, "scratch")
    assert (run / "summary.json").is_file()
