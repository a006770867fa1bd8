#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
# It installs Python, a CPU-only build of torch (no GPU on Gradescope, and the CPU wheel is
# several GB smaller) and the grader's few dependencies.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# util-linux provides unshare/setpriv; procps provides kill (used to kill leftovers).
apt-get install -y -q python3 python3-pip util-linux procps coreutils

pip_install() {
  # Newer Debian/Ubuntu images mark the system Python as externally managed (PEP 668).
  python3 -m pip install --no-cache-dir "$@" || python3 -m pip install --no-cache-dir --break-system-packages "$@"
}
pip_install --index-url https://download.pytorch.org/whl/cpu torch torchvision
pip_install numpy pyyaml tqdm absl-py

# Compile the grader once, so the sandbox never needs to write bytecode.
python3 -m compileall -q /autograder/source/autograder || true
python3 -c "import torch, numpy, yaml; print('setup ok: torch', torch.__version__)"
