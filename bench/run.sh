#!/usr/bin/env bash
# The benchmark, from a fresh checkout: installs distrain with its peers (Lightning, Accelerate) into .venv
# and runs bench/run.py (arguments are passed on, e.g. --repeats 7 --workloads xor).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[bench]'
export DISTRAIN_DATA="${DISTRAIN_DATA:-$HOME/.cache/distrain/data}"
.venv/bin/python tests/fetch_data.py --root "$DISTRAIN_DATA" >/dev/null  # the real MNIST and FashionMNIST
exec .venv/bin/python bench/run.py "$@"
