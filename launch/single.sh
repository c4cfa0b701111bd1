#!/usr/bin/env bash
# One process (CPU, or one GPU if present): no launcher, no process group.
#   usage: launch/single.sh CONFIG [key=value ...]
#   e.g.   launch/single.sh configs/xor.yaml trainer.epochs=10
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,4p' "$0"; exit 2; }
exec python -m distrain train "$@"
