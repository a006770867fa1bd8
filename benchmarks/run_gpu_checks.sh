#!/bin/bash
# Every GPU measurement that issues #4, #5 and #14 ask for. `quick` runs every CUDA path once
# (smoke presets with bf16 + compile, torchrun, NCCL/DDP, resume after SIGTERM, short forms of
# the benchmarks) in at most 7 minutes on one H100/H200 and writes ONE JSON summary,
# gpu_checks.json (see benchmarks/gpu_checks.py; its flags follow `quick`):
#
#   bash benchmarks/run_gpu_checks.sh quick            # GPU: $OUT/ or gpu-checks/quick-<time>/
#   bash benchmarks/run_gpu_checks.sh quick --cpu      # the same on the CPU, tiny sizes (CI)
#   bash benchmarks/run_gpu_checks.sh quick --parts bench_vit_step,resume_flower
#
# The other modes are the full measurements, in parts that each fit a 10-minute slot on one
# H100. Logs (and each benchmark's JSON line) go to LOG_DIR (default gpu-checks/, or $OUT on
# the course's device machine).
#
#   bash benchmarks/run_gpu_checks.sh speed      # ViT step (eager + compile), PixMo pipeline,
#                                                # window vs global attention (grids to 128x128)
#   bash benchmarks/run_gpu_checks.sh flower     # vit_vpt_deep pipeline, 100 epochs vs original
#   bash benchmarks/run_gpu_checks.sh accuracy   # pixmo_demo vs pixmo_point on synthetic data
#   bash benchmarks/run_gpu_checks.sh all        # the three in turn (about 25 minutes)
#
# Without ImageNet weights in torchvision's cache (an offline machine) the demos train from
# a random backbone and say so; their accuracies are then on SYNTHETIC data only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3)}" # python3 alone on some images
export PYTHONUNBUFFERED=1 # progress reaches the log as it happens
if [ "${1:-}" = quick ]; then
  shift
  exec "$PYTHON" -m benchmarks.gpu_checks "$@"
fi
LOG_DIR="${LOG_DIR:-${OUT:-gpu-checks}}"
mkdir -p "$LOG_DIR"

FAILED=()
run() { # run NAME COMMAND...: output to the terminal and LOG_DIR/NAME.log; a failure is
  # recorded and the next check still runs (a GPU slot is too precious to stop at one).
  local name="$1"
  shift
  echo "=== $name: $*"
  local start=$SECONDS rc=0
  "$@" 2>&1 | tee "$LOG_DIR/$name.log" || rc=$?
  echo "=== $name: exit $rc, $((SECONDS - start)) s wall"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
}

speed() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG_DIR/gpu.txt"
  run vit_step "$PYTHON" -m benchmarks.bench_vit_step
  run checkpoint "$PYTHON" -m benchmarks.bench_checkpoint
  # The original PixMo pipeline takes about 1.6 min for 20 epochs; time 10 and project.
  run pixmo_pipeline "$PYTHON" -m benchmarks.bench_pixmo_pipeline --original_epochs 10
  # Our side again with CUDA graphs (fewer kernel launches at batch 16).
  run pixmo_pipeline_graphs "$PYTHON" -m benchmarks.bench_pixmo_pipeline --only ours \
    --compile --compile_mode reduce-overhead
  run window_attention "$PYTHON" -m benchmarks.bench_window_attention
}

flower() {
  # The original flower pipeline would need 10+ minutes for 100 epochs: time 10, project.
  run flower_pipeline "$PYTHON" -m benchmarks.bench_flower_pipeline --original_epochs 10
  run flower_pipeline_compiled "$PYTHON" -m benchmarks.bench_flower_pipeline --only ours --compile
}

accuracy() {
  # Run folders (with their large checkpoints) stay out of LOG_DIR; a new folder per call.
  local runs
  runs="runs/gpu_checks/$(date +%Y%m%d-%H%M%S)"
  for preset in pixmo_demo pixmo_point; do
    run "$preset" "$PYTHON" demo_pixmo.py --exp_name "$preset" --output_dir "$runs/$preset"
    cp "$runs/$preset/config.yaml" "$LOG_DIR/$preset.config.yaml" 2>/dev/null || true
  done
}

case "${1:-}" in
  speed) speed ;;
  flower) flower ;;
  accuracy) accuracy ;;
  all) speed && flower && accuracy ;;
  *)
    echo "usage: bash benchmarks/run_gpu_checks.sh quick [--cpu] [--parts A,B]|speed|flower|accuracy|all" >&2
    exit 2
    ;;
esac
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED: ${FAILED[*]} (see $LOG_DIR/<name>.log)" >&2
  exit 1
fi
