#!/usr/bin/env bash
# torchrun across nodes: run this once on every node, with the same HOST:PORT (a host all nodes reach,
# usually node 0) and a distinct NODE_RANK per node. Nodes meet through c10d rendezvous.
#   usage: launch/torchrun_multinode.sh NNODES NODE_RANK NPROC_PER_NODE HOST:PORT CONFIG|SCRIPT.py CONFIG [key=value ...]
#   e.g.   on node0: launch/torchrun_multinode.sh 2 0 4 node0:29500 configs/xor.yaml
#          on node1: launch/torchrun_multinode.sh 2 1 4 node0:29500 configs/xor.yaml
#   elastic: NNODES=MIN:MAX (e.g. 1:2); a lost node makes the others re-form and resume (docs/pages/launching.md).
#   env: RDZV_ID (job id, same on every node), MAX_RESTARTS (0; 3 when elastic), RDZV_CONF (torchrun's
#        --rdzv-conf, e.g. last_call_timeout=10,keep_alive_interval=2).
#   run.dir must be on a file system every node sees (checkpoints are written by global rank 0 and
#   read by every rank on resume).
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,12p' "$0"; exit 2; }
nnodes=$1; node_rank=$2; nproc=$3; endpoint=$4; shift 4
# A user's script (train.py CONFIG [key=value ...]) runs as it is; a config runs distrain's own command.
if [[ "$1" == *.py ]]; then target=("$@"); else target=(-m distrain train "$@"); fi
# Elastic: a node lost is a failure of the survivors' workers, and each re-forming uses up one restart,
# so an elastic job without restarts would end at the first lost node.
if [[ "$nnodes" == *:* ]]; then restarts=${MAX_RESTARTS:-3}; else restarts=${MAX_RESTARTS:-0}; fi
exec torchrun --nnodes="$nnodes" --node_rank="$node_rank" --nproc_per_node="$nproc" \
  --rdzv_backend=c10d --rdzv_endpoint="$endpoint" --rdzv_id="${RDZV_ID:-distrain}" \
  ${RDZV_CONF:+--rdzv_conf="$RDZV_CONF"} --max-restarts="$restarts" "${target[@]}"
