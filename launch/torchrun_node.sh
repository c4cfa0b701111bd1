#!/usr/bin/env bash
# torchrun on one node: NPROC processes (one per GPU on a GPU box, or N CPU processes with gloo).
#   usage: launch/torchrun_node.sh NPROC CONFIG [key=value ...]
#   e.g.   launch/torchrun_node.sh 2 configs/xor.yaml
#   Restarts after a crash resume from the newest checkpoint: set MAX_RESTARTS (default 0).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,5p' "$0"; exit 2; }
nproc=$1; shift
exec torchrun --standalone --nproc_per_node="$nproc" --max-restarts="${MAX_RESTARTS:-0}" -m distrain train "$@"
