# shellcheck shell=bash
# Shared by the sbatch scripts (one per demo): this cluster's settings, then the job logic.
#
# Course staff: edit ONLY the block between the two "SITE SETTINGS" lines below. Both
# scripts source this file when the job starts, so one edit covers both questions.
# Students: nothing to change here.

# ============================ BEGIN SITE SETTINGS (edit me) ==============================
# An empty value means "not used". Example values (NCSA Delta AI, Fall 2025) in comments.
#
# Environment modules to load before Python starts (space separated).
#   e.g. SITE_MODULES="python/3.10.14 cuda/12.4.0 gcc-native/12.3"
SITE_MODULES=""
# A Python virtual environment (folder holding bin/activate) for everyone's jobs. Make it once
# with the versions the course was tested with (Python 3.11 or newer), from the kit's folder:
#   python3 -m venv /shared/path/venv && /shared/path/venv/bin/pip install -r requirements-lock.txt
# Empty: the venv or conda env active in the shell that ran sbatch, else `python3` on PATH.
#   e.g. SITE_VENV="/work/nvme/bfdu/cs444/fa25/mp3/venv"
SITE_VENV=""
# Shared copies of the datasets. Empty: the demos' defaults (./flower-dataset-reduced,
# ./pixmo_data; synthetic data, with a loud warning, when those are missing).
#   e.g. SITE_FLOWER_DATA_DIR="/work/nvme/bfdu/cs444/fa25/mp3/data/flower-dataset-reduced"
#   e.g. SITE_PIXMO_DATA_DIR="/work/nvme/bfdu/cs444/fa25/mp3/data/pixmo_data"
SITE_FLOWER_DATA_DIR=""
SITE_PIXMO_DATA_DIR=""
# Account and partition are NOT set here: sbatch reads `#SBATCH` lines before any shell
# runs, so they cannot come from a sourced file. Set them in the marked "SITE #SBATCH"
# block near the top of each sbatch script (the blocks must stay identical; a test checks
# that), or once per shell: export SBATCH_ACCOUNT=... SBATCH_PARTITION=...
# ============================= END SITE SETTINGS =========================================

# ---- Nothing to edit below this line. ----------------------------------------------------
#
# Job variables (pass them with sbatch --export=ALL,NAME=value,...):
#   OUTPUT_DIR  the run folder (required), relative to the folder you submitted from
#   EXP_NAME    the preset in config.yml (required)
#   DATA_DIR    a dataset folder for this job only (overrides the SITE_*_DATA_DIR above)
#   RESUME=1    continue the run in OUTPUT_DIR from its checkpoint.pt (a requeued job
#               does this by itself)
#   NGPUS       processes to start (default: the GPUs Slurm gave the job); more than 1
#               launches torchrun, one process per GPU
#   KIT_DIR     the kit's folder (default: the folder you ran sbatch in)
#   WARN_SECONDS  warning before the time limit (default 180; match --signal=B:USR1@...)

EX_TEMPFAIL=75 # the demos' exit status for "preempted: checkpoint written, resume me"
# Seconds of warning before the time limit; keep equal to "--signal=B:USR1@180" in the scripts.
WARN_SECONDS="${WARN_SECONDS:-180}"

kit_say() { echo "[$(date '+%F %T')] ${KIT_JOB_NAME:-job}: $*"; }
kit_fail() {
  echo "${KIT_JOB_NAME:-job}: error: $*" >&2
  exit 2
}

# Check the job variables, load the software, and cd into the kit. $1 = the demo script.
kit_prepare() {
  local demo="$1"
  if [ -z "${OUTPUT_DIR:-}" ] && [ -n "${DIR_NAME:-}" ]; then
    kit_fail "DIR_NAME is not used by this kit; pass OUTPUT_DIR instead (sbatch --export=ALL,OUTPUT_DIR=...,EXP_NAME=...)"
  fi
  if [ -z "${OUTPUT_DIR:-}" ] || [ -z "${EXP_NAME:-}" ]; then
    kit_fail "set OUTPUT_DIR and EXP_NAME, e.g. sbatch --export=ALL,OUTPUT_DIR=runs/x,EXP_NAME=preset ..."
  fi
  cd "$KIT_DIR" || kit_fail "cannot cd to KIT_DIR=$KIT_DIR"
  [ -f "$demo" ] || kit_fail "$demo not found in $KIT_DIR; run sbatch from the kit's folder (or pass KIT_DIR=...)"

  if [ -n "$SITE_MODULES" ]; then
    command -v module >/dev/null 2>&1 || kit_fail "SITE_MODULES is set in cluster_site.sh but this node has no 'module' command"
    set +u # module systems and old activate scripts read unset variables
    # shellcheck disable=SC2086  # one word per module
    module load $SITE_MODULES || kit_fail "'module load $SITE_MODULES' failed; fix SITE_MODULES in cluster_site.sh"
    set -u
  fi
  if [ -n "$SITE_VENV" ]; then
    [ -f "$SITE_VENV/bin/activate" ] || kit_fail "SITE_VENV=$SITE_VENV has no bin/activate; fix it in cluster_site.sh"
    set +u
    # shellcheck disable=SC1091
    source "$SITE_VENV/bin/activate"
    set -u
  fi
  # The interpreter of the kit's environment (the venv just activated, or the venv/conda env
  # active when sbatch ran), not whatever python3 comes first on the node's PATH.
  if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
      PYTHON="$VIRTUAL_ENV/bin/python"
    elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
      PYTHON="$CONDA_PREFIX/bin/python"
    else
      PYTHON=python3
    fi
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || kit_fail "'$PYTHON' not found; set SITE_VENV in cluster_site.sh or activate your environment before sbatch"

  # Slurm does not create folders: make the run folder here (the --output/--error folder
  # must already exist when the job starts, so the README creates it before sbatch).
  mkdir -p "$OUTPUT_DIR" || kit_fail "cannot create OUTPUT_DIR=$OUTPUT_DIR"
  # Named slurm-<job>.log so the demo does not mistake it for an existing run.
  KIT_LOG="$OUTPUT_DIR/slurm-${SLURM_JOB_ID:-local}.log"
}

# Send the caught signal on to the training process (Python or torchrun) as SIGTERM; the
# demo then finishes its step, writes checkpoint.pt and exits with status 75.
# Only the first signal is passed on: a second SIGTERM could hit the demo after it restored
# its default handlers (while it exits), killing it instead of letting it exit with 75.
kit_forward() {
  [ "$1" = USR1 ] && KIT_WARNED=1
  if [ -n "${KIT_CAUGHT:-}" ]; then
    kit_say "caught SIG$1 again; training is already stopping"
    return 0
  fi
  KIT_CAUGHT="$1"
  kit_say "caught SIG$1; asking training (pid ${KIT_CHILD:-not started}) to checkpoint and stop"
  if [ -n "${KIT_CHILD:-}" ]; then
    kill -TERM "$KIT_CHILD" 2>/dev/null || true
  fi
}

# Slurm's --signal warning comes from a periodic check and is not guaranteed (a requeued job
# on Slurm 22.05 was seen without one), so also arm our own: SIGUSR1 to this shell
# WARN_SECONDS before the job's end time. Two warnings are harmless.
kit_arm_warning() {
  KIT_TIMER=""
  KIT_END=""
  [ -n "${SLURM_JOB_ID:-}" ] || return 0
  local end_time end now wait_s
  end_time="$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -o 'EndTime=[^ ]*' | cut -d= -f2)" || true
  [ -n "$end_time" ] || return 0
  end="$(date -d "$end_time" +%s 2>/dev/null)" || return 0
  KIT_END="$end"
  now="$(date +%s)"
  wait_s=$((end - now - WARN_SECONDS))
  [ "$wait_s" -gt 0 ] || wait_s=1
  kit_say "time limit at $end_time; warning signal in ${wait_s} s"
  (
    sleep "$wait_s" &
    sleeper=$!
    # Stopping the timer must stop its sleep too (no stray process left behind).
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    wait "$sleeper" && kill -USR1 "$$" 2>/dev/null
  ) &
  KIT_TIMER=$!
}

# Run the demo, forward signals to it, and requeue the job when it stopped to be resumed.
# $1 = demo script, $2 = dataset folder from the site settings (may be empty),
# $3 = the predictions file the demo writes last (test_flower.txt / test_pixmo.txt).
kit_run() {
  local demo="$1" data_dir="${DATA_DIR:-$2}" predictions="$OUTPUT_DIR/$3"
  local args=(--exp_name "$EXP_NAME" --output_dir "$OUTPUT_DIR")
  local restarts="${SLURM_RESTART_COUNT:-0}"
  local checkpoint="$OUTPUT_DIR/checkpoint.pt"
  [ -n "$data_dir" ] && args+=(--data_dir "$data_dir")
  # Resume only a requeued job (or when asked), and only a folder that holds a run: a fresh
  # submission into an existing run folder must fail rather than silently continue it. A run
  # stopped before its first checkpoint (config.yaml only) resumes from step 0.
  if { [ "$restarts" -gt 0 ] || [ "${RESUME:-0}" = 1 ]; } &&
    { [ -f "$checkpoint" ] || [ -f "$OUTPUT_DIR/config.yaml" ]; }; then
    args+=(--resume)
  fi

  local ngpus="${NGPUS:-${SLURM_GPUS_ON_NODE:-1}}"
  case "$ngpus" in '' | *[!0-9]*) kit_fail "NGPUS must be a whole number, got '$ngpus'" ;; esac
  [ "$ngpus" -ge 1 ] || ngpus=1
  local launcher=("$PYTHON")
  if [ "$ngpus" -gt 1 ]; then
    # One process per GPU; torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT.
    launcher=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$ngpus")
  fi
  if [ -z "${OMP_NUM_THREADS:-}" ]; then
    # Split the job's CPUs between the processes (never more threads than usable cores).
    local cpus="${SLURM_CPUS_PER_TASK:-$(nproc)}"
    [ "$cpus" -gt "$(nproc)" ] && cpus="$(nproc)"
    export OMP_NUM_THREADS=$((cpus / ngpus > 0 ? cpus / ngpus : 1))
  fi

  kit_say "job ${SLURM_JOB_ID:-local} on $(hostname), restart $restarts; GPUs: ${CUDA_VISIBLE_DEVICES:-none}; processes: $ngpus; OMP_NUM_THREADS=$OMP_NUM_THREADS"
  kit_say "run: ${launcher[*]} $demo ${args[*]}"
  kit_say "log: $KIT_LOG"

  KIT_CAUGHT=""
  KIT_WARNED=""
  KIT_CHILD=""
  trap 'kit_forward USR1' USR1
  trap 'kit_forward TERM' TERM
  kit_arm_warning
  local started
  started="$(date +%s)"
  # Background + wait, so the traps run while training does (bash runs a trap only between
  # commands). Both streams also go to the run folder's log; the tee processes ignore
  # SIGTERM so the demo's last words (and its checkpoint message) are not lost.
  "${launcher[@]}" "$demo" "${args[@]}" \
    > >(trap '' TERM USR1 && exec tee -a "$KIT_LOG") \
    2> >(trap '' TERM USR1 && exec tee -a "$KIT_LOG" >&2) &
  KIT_CHILD=$!
  # A signal that came while starting: pass it on now.
  [ -n "$KIT_CAUGHT" ] && { kill -TERM "$KIT_CHILD" 2>/dev/null || true; }
  local rc=0 again=0
  wait "$KIT_CHILD" || rc=$?
  # A trapped signal interrupts `wait` (status > 128) while training goes on: wait again.
  while kill -0 "$KIT_CHILD" 2>/dev/null; do
    rc=0
    wait "$KIT_CHILD" || rc=$?
  done
  # It ended while the trap ran: bash keeps its exit status, ask for it once more.
  if [ "$rc" -gt 128 ]; then
    wait "$KIT_CHILD" || again=$?
    [ "$again" -ne 127 ] && rc=$again
  fi
  [ -n "$KIT_TIMER" ] && { kill "$KIT_TIMER" 2>/dev/null || true; }
  sleep 1 # let the tee processes flush

  if [ "$rc" -eq 0 ]; then
    kit_say "training finished"
    return 0
  fi
  # A signal that arrives after the demo wrote its predictions (while it exits) kills it, but
  # the run is complete: nothing to resume.
  if [ -n "$KIT_CAUGHT" ] && [ -f "$predictions" ] && [ "$(stat -c %Y "$predictions")" -ge "$started" ]; then
    kit_say "training finished (SIG$KIT_CAUGHT came while the demo was exiting; status $rc)"
    return 0
  fi
  if [ "$rc" -ne "$EX_TEMPFAIL" ] && [ -z "$KIT_CAUGHT" ]; then
    kit_say "training failed with exit status $rc (see $KIT_LOG)"
    return "$rc"
  fi
  # Requeue only when this job wrote a checkpoint: without progress it would loop forever.
  if [ ! -f "$checkpoint" ] || [ "$(stat -c %Y "$checkpoint")" -lt "$started" ]; then
    kit_say "stopped (status $rc) without writing a new checkpoint; not requeued. Resubmit with a longer --time (add RESUME=1 to continue from an older checkpoint.pt)"
    return "$EX_TEMPFAIL"
  fi
  # Requeue after the warning (SIGUSR1) or at the time limit, never after `scancel` (also a
  # SIGTERM): a job its owner cancelled must stay cancelled.
  if [ "$KIT_WARNED" != 1 ] && { [ -z "$KIT_END" ] || [ "$(date +%s)" -lt $((KIT_END - 60)) ]; }; then
    kit_say "stopped by SIG${KIT_CAUGHT:-?} before the time limit (scancel?): checkpoint kept, not requeued; continue later by adding RESUME=1 to --export"
    return "$EX_TEMPFAIL"
  fi
  if [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"; then
    kit_say "checkpoint saved (status $rc); requeued job $SLURM_JOB_ID, which resumes from $checkpoint"
    return 0
  fi
  kit_say "checkpoint saved (status $rc) but the job was not requeued; continue with: sbatch --export=ALL,OUTPUT_DIR=$OUTPUT_DIR,EXP_NAME=$EXP_NAME,RESUME=1 ..."
  return "$EX_TEMPFAIL"
}
