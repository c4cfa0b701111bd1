#!/usr/bin/env bash
# torchrun on one node: NPROC processes (one per GPU on a GPU box, or N CPU processes with gloo).
#   usage: launch/torchrun_node.sh NPROC CONFIG|SCRIPT.py CONFIG [key=value ...]
#   e.g.   launch/torchrun_node.sh 2 configs/xor.yaml
#   Restarts after a crash resume from the newest checkpoint: set MAX_RESTARTS (default 0).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,5p' "$0"; exit 2; }
nproc=$1; shift
# A user's script (train.py CONFIG [key=value ...]) runs as it is; a config runs distrain's own command.
if [[ "$1" == *.py ]]; then target=("$@"); else target=(-m distrain train "$@"); fi
exec torchrun --standalone --nproc_per_node="$nproc" --max-restarts="${MAX_RESTARTS:-0}" "${target[@]}"
