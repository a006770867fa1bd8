"""The sbatch scripts without a cluster: syntax, settings, README agreement, and their logic.

The logic tests run ``bash flower.sbatch`` outside Slurm (it works there too) on a copy of the
kit whose demo is replaced by ``tests/slurm/fake_demo.py``, so they take a fraction of a
second each: the fake demo's steps take no time unless a test needs them
(``FAKE_STEP_SECONDS``), and the script's own one-second pause after the demo (``sleep 1``,
for its log's tee processes to flush) is shortened by a ``sleep`` on PATH
(``quick_sleep_dir``): the tests read the log once the job's tee processes have exited, so
the pause changes nothing they check. The slow torchrun test keeps the real pause. The real
demos on a real (local) Slurm cluster are in test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from kit_files import (
    KIT,
    SCRIPTS,
    SITE_FILE,
    parse_sbatch,
    readme_bash_blocks,
    readme_cluster_section,
)

FAKE_DEMO = Path(__file__).parent / "slurm" / "fake_demo.py"
DEMOS = {"flower": "demo_flower.py", "pixmo": "demo_pixmo.py"}


def sbatch_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("#SBATCH")]


def site_block(path: Path) -> str:
    text = path.read_text()
    match = re.search(r"# ---- BEGIN SITE #SBATCH.*?# ---- END SITE #SBATCH lines ----", text, re.S)
    assert match, f"{path.name} has no marked SITE #SBATCH block"
    return match.group(0)


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize("name", ["flower", "pixmo"])
def test_shebang_on_line_one_and_bash_syntax(name):
    path = SCRIPTS[name]
    assert path.read_text().splitlines()[0] == "#!/bin/bash", "the shebang must be line 1"
    for file in (path, SITE_FILE):
        result = subprocess.run(["bash", "-n", str(file)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["flower", "pixmo"])
def test_resources_match_the_reference(name):
    lines = sbatch_lines(SCRIPTS[name])
    for wanted in (
        "#SBATCH --nodes=1",
        "#SBATCH --gpus=1",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --mem=48G",
        "#SBATCH --time=02:00:00",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
    ):
        assert wanted in lines, f"{SCRIPTS[name].name} lacks '{wanted}'"


def test_both_scripts_share_settings_and_site_block():
    flower, pixmo = (sbatch_lines(SCRIPTS[n]) for n in ("flower", "pixmo"))
    strip = [line for line in flower if "--job-name" not in line]
    assert strip == [line for line in pixmo if "--job-name" not in line]
    assert site_block(SCRIPTS["flower"]) == site_block(SCRIPTS["pixmo"])
    # The script's own warning timer uses the same lead time as Slurm's --signal.
    signal_line = [line for line in flower if line.startswith("#SBATCH --signal=")]
    assert signal_line == ["#SBATCH --signal=B:USR1@180"]
    assert 'WARN_SECONDS="${WARN_SECONDS:-180}"' in SITE_FILE.read_text()


def test_site_settings_block_is_marked_and_empty_by_default():
    text = SITE_FILE.read_text()
    block = re.search(r"BEGIN SITE SETTINGS.*?END SITE SETTINGS", text, re.S)
    assert block, "cluster_site.sh must mark its settings block"
    settings = dict(re.findall(r'^(SITE_\w+)="(.*)"$', block.group(0), re.M))
    assert set(settings) == {
        "SITE_MODULES",
        "SITE_VENV",
        "SITE_FLOWER_DATA_DIR",
        "SITE_PIXMO_DATA_DIR",
    }
    assert all(v == "" for v in settings.values()), "ship the kit with site values unset"
    # Nothing site-specific outside the block.
    after = text[block.end() :]
    assert "/work/" not in after and "module load python" not in after


def test_scripts_read_output_dir_and_exp_name_never_dir_name():
    text = SITE_FILE.read_text()
    assert '--exp_name "$EXP_NAME"' in text and '--output_dir "$OUTPUT_DIR"' in text
    # DIR_NAME (the original defect) is only mentioned to explain the error.
    uses = [line for line in text.splitlines() if "DIR_NAME" in line]
    assert uses and all(
        "DIR_NAME" in u and ("-z" in u or "-n" in u or "kit_fail" in u) for u in uses
    )
    for path in SCRIPTS.values():
        assert "DIR_NAME" not in path.read_text()


# ---------------------------------------------------------------- README agreement


def test_readme_commands_agree_with_the_scripts():
    blocks = readme_bash_blocks()
    assert len(blocks) >= 4, "README cluster section: expected smoke and real commands"
    presets = yaml.safe_load((KIT / "config.yml").read_text())
    documented = set(re.findall(r"^#   (\w+)(?:=1)?\s", SITE_FILE.read_text(), re.M))
    seen = set()
    for block in blocks:
        lines = [line for line in block.strip().splitlines() if line.strip()]
        sbatch = [line for line in lines if line.startswith("sbatch ")]
        assert len(sbatch) == 1, f"one sbatch line per block:\n{block}"
        cmd = parse_sbatch(sbatch[0])
        name = cmd["script"].removesuffix(".sbatch")
        seen.add(name)
        assert cmd["script"] in (f"{n}.sbatch" for n in SCRIPTS), cmd["script"]
        assert cmd["export_all"], "--export must start with ALL (keep PATH, the venv, ...)"
        assert set(cmd["vars"]) == {"OUTPUT_DIR", "EXP_NAME"}, cmd["vars"]
        out_dir = cmd["vars"]["OUTPUT_DIR"]
        assert cmd["output"] == f"{out_dir}/%j.out" and cmd["error"] == f"{out_dir}/%j.err"
        # Slurm does not create the --output folder: the block creates it first.
        assert lines[0] == f"mkdir -p {out_dir}", f"'mkdir -p {out_dir}' must come first"
        section = presets.get(name) or {}
        assert cmd["vars"]["EXP_NAME"] in section, (
            f"README runs preset {cmd['vars']['EXP_NAME']!r}, not in config.yml section {name}"
        )
    assert seen == set(SCRIPTS)
    # Every variable the README tells students to pass is one the scripts read.
    table = set(re.findall(r"^\| `(\w+)(?:=1)?` \|", readme_cluster_section(), re.M))
    assert table and table <= documented, f"README variables {table - documented} unknown"
    for var in table:
        assert f"{var}" in SITE_FILE.read_text()


def test_script_headers_show_the_readme_command():
    for name, path in SCRIPTS.items():
        header = path.read_text().split("#SBATCH", 1)[0]
        joined = header.replace("\\\n#     ", "")
        assert f"--export=ALL,OUTPUT_DIR=runs_{name}/" in joined
        assert joined.count(f"{path.name}") >= 1


# ---------------------------------------------------------------- logic, outside Slurm


@pytest.fixture
def fake_kit(tmp_path):
    """A kit folder whose demos are the fast fake demo (same command-line contract)."""
    for path in (*SCRIPTS.values(), SITE_FILE):
        shutil.copy(path, tmp_path / path.name)
    for demo in DEMOS.values():
        shutil.copy(FAKE_DEMO, tmp_path / demo)
    return tmp_path


def quick_sleep_dir(kit: Path) -> Path:
    """A folder for the front of PATH whose ``sleep`` makes the script's ``sleep 1`` (after
    the demo: the tee processes of its log flush) last 0.05 s; any other sleep (the warning
    timer's) is the real one, in the same process."""
    folder = kit / "quick_sleep_bin"
    if not folder.is_dir():
        folder.mkdir()
        real = shutil.which("sleep")
        (folder / "sleep").write_text(
            f'#!/bin/sh\nif [ "$*" = 1 ]; then exec {real} 0.05; fi\nexec {real} "$@"\n'
        )
        (folder / "sleep").chmod(0o755)
    return folder


def run_script(
    kit: Path, name: str, env: dict, quick_sleep: bool = True, **kw
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    clean.pop("OMP_NUM_THREADS", None)
    clean["FAKE_STEP_SECONDS"] = "0"  # the fake demo's 5 steps, at once (env may ask for more)
    env = {**clean, **env}
    if quick_sleep:
        env["PATH"] = f"{quick_sleep_dir(kit)}:{env['PATH']}"
    return subprocess.run(
        ["bash", f"{name}.sbatch"],
        cwd=kit,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def starts(run_dir: Path) -> list[str]:
    return (run_dir / "starts.txt").read_text().splitlines()


@pytest.mark.parametrize("name", ["flower", "pixmo"])
def test_runs_the_demo_with_the_exported_settings(fake_kit, name):
    result = run_script(fake_kit, name, {"OUTPUT_DIR": "runs/a", "EXP_NAME": "e1"})
    assert result.returncode == 0, result.stderr + result.stdout
    run = fake_kit / "runs" / "a"
    assert f"{DEMOS[name]} --exp_name e1 --output_dir runs/a" in result.stdout
    assert (run / "test_fake.txt").exists()
    assert starts(run)[0].startswith("rank=0 world=1 resume=False step=0")
    # The log in the run folder has both streams and is not an "existing run" marker.
    log = (run / "slurm-local.log").read_text()
    assert "fake demo: done" in log


def test_missing_variables_are_one_clear_line(fake_kit):
    result = run_script(fake_kit, "flower", {"EXP_NAME": "e1"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "set OUTPUT_DIR and EXP_NAME" in result.stderr
    result = run_script(fake_kit, "flower", {"DIR_NAME": "runs/a", "EXP_NAME": "e1"})
    assert result.returncode == 2 and "pass OUTPUT_DIR instead" in result.stderr


def test_kit_folder_is_required(fake_kit, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = run_script(
        fake_kit, "flower", {"OUTPUT_DIR": "r", "EXP_NAME": "e", "KIT_DIR": str(elsewhere)}
    )
    assert result.returncode == 2 and "run sbatch from the kit's folder" in result.stderr


def test_existing_run_is_refused_and_resume_continues_it(fake_kit):
    env = {"OUTPUT_DIR": "runs/a", "EXP_NAME": "e1"}
    assert run_script(fake_kit, "flower", env).returncode == 0
    again = run_script(fake_kit, "flower", env)
    assert again.returncode != 0 and "holds a run already" in again.stderr
    resumed = run_script(fake_kit, "flower", {**env, "RESUME": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert "--resume" in resumed.stdout
    assert starts(fake_kit / "runs" / "a")[-1].startswith("rank=0 world=1 resume=True step=5")


def test_requeued_job_passes_resume_only_with_a_checkpoint(fake_kit):
    env = {"OUTPUT_DIR": "runs/b", "EXP_NAME": "e1", "SLURM_RESTART_COUNT": "1"}
    first = run_script(fake_kit, "flower", env)  # no checkpoint yet: a fresh start
    assert first.returncode == 0 and "--resume" not in first.stdout
    second = run_script(fake_kit, "flower", env)
    assert second.returncode == 0 and "--resume" in second.stdout


def test_resume_continues_a_run_stopped_before_its_first_checkpoint(fake_kit):
    """config.yaml without checkpoint.pt: the demo says "pass --resume", so RESUME=1 (and a
    requeued job) must pass it; the demo then starts that run again from step 0."""
    run = fake_kit / "runs" / "c"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    env = {"OUTPUT_DIR": "runs/c", "EXP_NAME": "e1", "RESUME": "1"}
    assert "--resume" in run_script(fake_kit, "flower", env).stdout


def test_data_dir_from_site_settings_and_per_job(fake_kit):
    data = fake_kit / "shared-data"
    data.mkdir()
    site = fake_kit / "cluster_site.sh"
    site.write_text(
        site.read_text().replace('SITE_PIXMO_DATA_DIR=""', f'SITE_PIXMO_DATA_DIR="{data}"')
    )
    result = run_script(fake_kit, "pixmo", {"OUTPUT_DIR": "r1", "EXP_NAME": "e"})
    assert result.returncode == 0 and f"--data_dir {data}" in result.stdout
    result = run_script(fake_kit, "flower", {"OUTPUT_DIR": "r2", "EXP_NAME": "e"})
    assert result.returncode == 0 and "--data_dir" not in result.stdout
    result = run_script(
        fake_kit, "flower", {"OUTPUT_DIR": "r3", "EXP_NAME": "e", "DATA_DIR": "nope"}
    )
    assert result.returncode == 2 and "data folder nope not found" in result.stderr


def test_bad_site_venv_is_reported(fake_kit):
    site = fake_kit / "cluster_site.sh"
    site.write_text(site.read_text().replace('SITE_VENV=""', 'SITE_VENV="/no/such/venv"'))
    result = run_script(fake_kit, "flower", {"OUTPUT_DIR": "r", "EXP_NAME": "e"})
    assert result.returncode == 2 and "SITE_VENV=/no/such/venv has no bin/activate" in result.stderr


def _fake_env(folder: Path) -> Path:
    """A folder that looks like a venv: bin/python runs this interpreter."""
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_jobs_use_the_python_of_the_active_environment(fake_kit, tmp_path, variable):
    """Not whatever python3 comes first on the node's PATH (e.g. a module's)."""
    env_python = _fake_env(tmp_path / "env")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "python3").write_text("#!/bin/sh\necho decoy python used >&2; exit 3\n")
    (decoy / "python3").chmod(0o755)
    clean = {"OUTPUT_DIR": "runs/v", "EXP_NAME": "e1", variable: str(tmp_path / "env"),
             "PATH": f"{decoy}:{os.environ['PATH']}"}  # fmt: skip
    for other in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        clean.setdefault(other, "")
    result = run_script(fake_kit, "flower", clean)
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"run: {env_python} demo_flower.py" in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_is_forwarded_and_checkpoint_kept(fake_kit, sig):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))},
        "OUTPUT_DIR": "runs/s",
        "EXP_NAME": "e1",
        "FAKE_STEPS": "600",
        "FAKE_STEP_SECONDS": "0.05",
        "PATH": f"{quick_sleep_dir(fake_kit)}:{os.environ['PATH']}",
    }
    proc = subprocess.Popen(
        ["bash", "flower.sbatch"], cwd=fake_kit, env=env, stdout=subprocess.PIPE, text=True
    )
    run = fake_kit / "runs" / "s"
    deadline = time.monotonic() + 30
    while not (run / "starts.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # starts.txt is written after the fake demo set its handlers
    proc.send_signal(sig)  # what Slurm does to the batch shell (B:USR1) or at the time limit
    out, _ = proc.communicate(timeout=60)
    # Outside Slurm nothing can requeue: the script reports 75 and how to continue.
    assert proc.returncode == 75, out
    assert f"caught SIG{sig.name.removeprefix('SIG')}" in out
    assert "RESUME=1" in out
    step = int((run / "checkpoint.pt").read_text())
    assert 0 < step < 600


def test_no_requeue_without_a_new_checkpoint(fake_kit):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))},
        "OUTPUT_DIR": "runs/n",
        "EXP_NAME": "e1",
        "SLURM_JOB_ID": "999999",  # pretend: the script would call scontrol requeue
        "PATH": f"{quick_sleep_dir(fake_kit)}:{fake_kit}:{os.environ['PATH']}",
    }
    # A demo that dies of the signal before saving anything (e.g. still importing torch).
    (fake_kit / "demo_flower.py").write_text("import time\ntime.sleep(60)\n")
    # A fake scontrol: the job ends in an hour (so the script arms its warning timer).
    (fake_kit / "scontrol").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = show ]; then\n'
        '  echo "JobId=999999 JobState=RUNNING EndTime=$(date -d @$(($(date +%s) + 3600)) +%FT%T)"\n'
        "else\n"
        '  echo scontrol-called "$@"\n'
        "fi\n"
    )
    (fake_kit / "scontrol").chmod(0o755)
    proc = subprocess.Popen(
        ["bash", "flower.sbatch"],
        cwd=fake_kit,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # Once the timer is armed (its message), give the job a moment to start the demo and the
    # timer its own sleep, then send Slurm's warning.
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "warning signal in" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert proc.returncode == 75
    assert "warning signal in 3" in out  # the timer was armed (~3420 s)
    assert "without writing a new checkpoint; not requeued" in out
    assert "scontrol-called requeue" not in out
    # Nothing of the job is left running (e.g. the timer's sleep).
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "sid=,args="], capture_output=True, text=True).stdout
    left = [
        line
        for line in ps.splitlines()
        if line.split()[0] == str(proc.pid) and "<defunct>" not in line
    ]
    assert not left, f"processes left behind: {left}"


@pytest.mark.slow
def test_two_processes_are_launched_with_torchrun(fake_kit):
    env = {"OUTPUT_DIR": "runs/m", "EXP_NAME": "e", "NGPUS": "2"}
    result = run_script(fake_kit, "flower", env, quick_sleep=False)  # the real pause, too
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in result.stdout
    run = fake_kit / "runs" / "m"
    assert starts(run)[0].startswith("rank=0 world=2")
    assert "omp=" in starts(run)[0]
    assert (run / "starts_rank1.txt").read_text().startswith("rank=1 world=2")


FAKE_TORCHRUN = """#!/bin/sh
# The environment's python, except that `-m torch.distributed.run ... --nproc_per_node=N
# DEMO ARGS` starts N copies of DEMO with torchrun's variables (no torch needed).
if [ "$1" = -m ] && [ "$2" = torch.distributed.run ]; then
  echo "fake torchrun: $*"
  shift 2
  n=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --nproc_per_node=*) n="${1#*=}"; shift ;;
      --*) shift ;;
      *) break ;;
    esac
  done
  pids=""
  rank=0
  while [ "$rank" -lt "$n" ]; do
    RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=$n "PYTHON_EXE" "$@" &
    pids="$pids $!"
    rank=$((rank + 1))
  done
  status=0
  for pid in $pids; do wait "$pid" || status=$?; done
  exit $status
fi
exec "PYTHON_EXE" "$@"
"""


def test_more_than_one_gpu_launches_torchrun_one_process_each(fake_kit, tmp_path):
    """NGPUS=2: the launcher is torchrun with 2 processes and the CPUs split between them
    (the script's logic; a fake torchrun starts the ranks). The real torchrun: the slow
    test above."""
    (tmp_path / "env" / "bin").mkdir(parents=True)
    python = tmp_path / "env" / "bin" / "python"
    python.write_text(FAKE_TORCHRUN.replace("PYTHON_EXE", sys.executable))
    python.chmod(0o755)
    env = {"OUTPUT_DIR": "runs/m", "EXP_NAME": "e", "NGPUS": "2"}
    env.update(VIRTUAL_ENV=str(tmp_path / "env"), CONDA_PREFIX="")
    result = run_script(fake_kit, "flower", env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in result.stdout
    assert "fake torchrun: -m torch.distributed.run --standalone --nproc_per_node=2" in (
        result.stdout
    )
    run = fake_kit / "runs" / "m"
    assert starts(run)[0].startswith("rank=0 world=2")
    omp = starts(run)[0].split("omp=")[1]
    assert int(omp) == max(1, int(subprocess.check_output(["nproc"], text=True)) // 2)
    assert (run / "starts_rank1.txt").read_text().startswith("rank=1 world=2")


# ---------------------------------------------------------------- harness


def test_skip_reason_says_what_is_missing_and_how_to_fix_it(monkeypatch):
    import local_cluster

    monkeypatch.setattr(local_cluster, "find_program", lambda name: None)
    reason = local_cluster.unavailable_reason()
    assert "missing: munged, slurmctld" in reason and "install_slurm.sh" in reason
    monkeypatch.setattr(local_cluster, "find_program", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(local_cluster.os, "geteuid", lambda: 1000)
    assert "as root" in local_cluster.unavailable_reason()


def test_install_script_is_a_no_op_when_installed():
    import local_cluster

    script = Path(__file__).parent / "slurm" / "install_slurm.sh"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if local_cluster.unavailable_reason():
        pytest.skip(f"Slurm not installed here: {local_cluster.unavailable_reason()}")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "already installed" in result.stdout


def test_late_signal_after_the_predictions_is_not_a_failure(fake_kit):
    """A signal while the demo exits (predictions written) must not requeue a finished run."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))},
        "OUTPUT_DIR": "runs/late",
        "EXP_NAME": "e1",
        "PATH": f"{quick_sleep_dir(fake_kit)}:{os.environ['PATH']}",
    }
    # Writes checkpoint and predictions, then "shuts down" with default signal handlers.
    (fake_kit / "demo_flower.py").write_text(
        "import pathlib, time\n"
        "out = pathlib.Path('runs/late')\n"
        "(out / 'checkpoint.pt').write_text('done')\n"
        "(out / 'test_flower.txt').write_text('1\\n2\\n')\n"
        "print('predictions written', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        ["bash", "flower.sbatch"], cwd=fake_kit, env=env, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not (fake_kit / "runs/late/test_flower.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "training finished (SIGUSR1 came while the demo was exiting" in out
