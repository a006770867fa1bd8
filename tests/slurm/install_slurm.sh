#!/usr/bin/env bash
# Install the Debian packages the local Slurm test cluster needs (slurm-wlm, munge).
#
# Used by .ci/run before the test suite and by hand:  bash tests/slurm/install_slurm.sh
# Idempotent: does nothing when slurmctld, slurmd, sbatch and munged are already installed.
# Exits non-zero with a one-line reason when it cannot install them (not root, no apt-get,
# no package index); the Slurm tests then skip and print why.
set -uo pipefail

need=(slurmctld slurmd sbatch munged)
missing=()
for cmd in "${need[@]}"; do
  # munged lives in /usr/sbin, which may not be on a non-login PATH.
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_slurm: slurm-wlm and munge already installed"
  exit 0
fi
echo "install_slurm: missing ${missing[*]}; installing slurm-wlm and munge with apt-get"

if [ "$(id -u)" -ne 0 ]; then
  echo "install_slurm: cannot install: not root (run as root, or: sudo apt-get install slurm-wlm munge)" >&2
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm: cannot install: apt-get not found (this harness expects Debian/Ubuntu)" >&2
  exit 3
fi

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
# The packages' postinst scripts try to start services; in a container without systemd
# that fails harmlessly, and the test harness starts the daemons itself anyway.
if ! apt-get update -qq; then
  echo "install_slurm: cannot install: 'apt-get update' failed (no package mirror reachable?)" >&2
  exit 4
fi
if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >/tmp/install_slurm.log 2>&1; then
  tail -n 20 /tmp/install_slurm.log >&2
  echo "install_slurm: cannot install: 'apt-get install slurm-wlm munge' failed (log: /tmp/install_slurm.log)" >&2
  exit 5
fi
for cmd in "${need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    echo "install_slurm: installed the packages but '$cmd' is still missing" >&2
    exit 6
  fi
done
echo "install_slurm: installed slurm-wlm and munge in $(( $(date +%s) - start )) s"
