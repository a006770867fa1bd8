#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
# It installs Python, a CPU-only build of torch (no GPU on Gradescope, and the CPU wheel is
# several GB smaller) and the grader's few dependencies, at the versions of
# requirements-lock.txt: the set the reference data and the grader were built and tested with.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LOCK="$HERE/requirements-lock.txt"

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# util-linux provides unshare/setpriv; procps provides kill (used to kill leftovers).
apt-get install -y -q python3 python3-pip util-linux procps coreutils

# The lock's numpy and torch builds need Python 3.11 or newer.
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: python3 is $(python3 -V 2>&1); the locked packages need Python 3.11 or newer." >&2
  echo "setup.sh: choose a newer base image in Gradescope's autograder settings (Ubuntu 24.04 has 3.12)." >&2
  exit 1
fi

pip_install() {
  # Newer Debian/Ubuntu images mark the system Python as externally managed (PEP 668).
  python3 -m pip install --no-cache-dir "$@" || python3 -m pip install --no-cache-dir --break-system-packages "$@"
}
# `-c "$LOCK"` pins every package installed (and what it pulls in) to the lock's version. The
# CPU index serves torch 2.14.1 as 2.14.1+cpu, which satisfies the pin torch==2.14.1 and is
# preferred to PyPI's CUDA build of the same version.
pip_install -c "$LOCK" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple torch torchvision
pip_install -c "$LOCK" numpy pyyaml tqdm absl-py

# Compile the grader once, so the sandbox never needs to write bytecode.
python3 -m compileall -q /autograder/source/autograder || true
python3 -c "import torch, numpy, yaml; print('setup ok: torch', torch.__version__, 'numpy', numpy.__version__)"
