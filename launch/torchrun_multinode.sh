#!/usr/bin/env bash
# torchrun across nodes: run this once on every node, with the same HOST:PORT (a host all nodes reach,
# usually node 0) and a distinct NODE_RANK per node. Nodes meet through c10d rendezvous.
#   usage: launch/torchrun_multinode.sh NNODES NODE_RANK NPROC_PER_NODE HOST:PORT CONFIG|SCRIPT.py CONFIG [key=value ...]
#   e.g.   on node0: launch/torchrun_multinode.sh 2 0 4 node0:29500 configs/xor.yaml
#          on node1: launch/torchrun_multinode.sh 2 1 4 node0:29500 configs/xor.yaml
#   run.dir must be on a file system every node sees (checkpoints are written by global rank 0 and
#   read by every rank on resume).
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,9p' "$0"; exit 2; }
nnodes=$1; node_rank=$2; nproc=$3; endpoint=$4; shift 4
# A user's script (train.py CONFIG [key=value ...]) runs as it is; a config runs distrain's own command.
if [[ "$1" == *.py ]]; then target=("$@"); else target=(-m distrain train "$@"); fi
exec torchrun --nnodes="$nnodes" --node_rank="$node_rank" --nproc_per_node="$nproc" \
  --rdzv_backend=c10d --rdzv_endpoint="$endpoint" --rdzv_id="${RDZV_ID:-distrain}" \
  --max-restarts="${MAX_RESTARTS:-0}" "${target[@]}"
