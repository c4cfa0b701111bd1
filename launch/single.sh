#!/usr/bin/env bash
# One process (CPU, or one GPU if present): no launcher, no process group.
#   usage: launch/single.sh CONFIG [key=value ...]   or   launch/single.sh SCRIPT.py CONFIG [key=value ...]
#   e.g.   launch/single.sh configs/xor.yaml trainer.epochs=10
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,4p' "$0"; exit 2; }
# A user's script (train.py CONFIG [key=value ...]) runs as it is; a config runs distrain's own command.
if [[ "$1" == *.py ]]; then target=("$@"); else target=(-m distrain train "$@"); fi
exec "${DISTRAIN_PYTHON:-python}" "${target[@]}"
