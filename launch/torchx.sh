#!/usr/bin/env bash
# TorchX: distrain under TorchX's dist.ddp component, on any TorchX scheduler (local_cwd, kubernetes,
# slurm, ray, ...). dist.ddp runs `torchrun --rdzv_backend c10d --rdzv_endpoint ${TORCHX_RANK0_HOST:=localhost}:29500
# --nnodes NNODES --nproc_per_node NPROC -m distrain train CONFIG ...` on each node; the scheduler sets
# TORCHX_RANK0_HOST to node 0's host (launch "torchrun on torchx").
#   usage: launch/torchx.sh SCHEDULER NNODESxNPROC CONFIG [key=value ...]
#   e.g.   launch/torchx.sh local_cwd 1x2 xor run.dir=runs/xor       (this machine, 2 processes)
#          launch/torchx.sh kubernetes 2x8 xor run.dir=/shared/runs/xor   (add --scheduler_args via TORCHX_ARGS)
#   env: TORCHX_ARGS (extra `torchx run` options, e.g. --scheduler_args namespace=ml), MAX_RETRIES (0):
#        TorchX restarts the job that many times after a failure; each restart resumes from the newest checkpoint.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,10p' "$0"; exit 2; }
scheduler=$1; j=$2; shift 2
# shellcheck disable=SC2086  # TORCHX_ARGS is a list of options
exec torchx run -s "$scheduler" ${TORCHX_ARGS:-} dist.ddp -j "$j" --max_retries "${MAX_RETRIES:-0}" -m distrain -- train "$@"
