"""Kubernetes: what Kubeflow's PyTorchJob and TrainJob, JobSet and TorchX leave in a pod's environment
(pure functions of the environment mapping, called by env.detect in its order).

- PyTorchJob v1, one process per pod: RANK (the pod's index), WORLD_SIZE (pods x nprocPerNode),
  MASTER_ADDR/PORT, PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, no LOCAL_RANK -> `pytorchjob`.
  Its trap: nprocPerNode > 1 (or LOCAL_WORLD_SIZE > 1) without torchrun: RANK counts pods, every process
  of the pod would claim it and wait forever; refused naming WORLD_SIZE and the torchrun command.
- TrainJob (Trainer v2) and PyTorchJob's elastic form: PET_<FLAG> for torchrun. Without torchrun they mean
  nothing to torch (each pod would train alone); refused naming PET_NNODES and the torchrun command.
- Under torchrun (TrainJob, torchrun in a PyTorchJob pod, JobSet, TorchX): torchrun's variables rule;
  `platform` names the outer launcher from what it leaves (shown in the run's header). Its trap: a pod told
  PET_NNODES > 1 whose torchrun formed a group of one node (--standalone, --nnodes=1): refused.
"""

from __future__ import annotations

from typing import Mapping

from distrain.errors import EnvError
from distrain.launch.contract import DistEnv, int_var, one_line, validated

# What Kubeflow's controllers (PyTorchJob, TrainJob) set for torchrun: each names one of its flags.
PET_VARS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_RDZV_ENDPOINT")
_TORCHRUN_IN_POD = (
    "torchrun --nnodes=$PET_NNODES --nproc_per_node=$PET_NPROC_PER_NODE --node_rank=$PET_NODE_RANK "
    "--master_addr={addr} --master_port={port} -m distrain train CONFIG"
)


def is_pod_without_torchrun(environ: Mapping[str, str]) -> bool:
    """PyTorchJob v1's own contract: RANK and WORLD_SIZE but no LOCAL_RANK, in a Kubernetes pod."""
    in_pod = "PET_NNODES" in environ or "KUBERNETES_SERVICE_HOST" in environ
    return in_pod and "RANK" in environ and "WORLD_SIZE" in environ and "LOCAL_RANK" not in environ


def from_pytorchjob(environ: Mapping[str, str]) -> DistEnv:
    """One process per pod: RANK is the pod's index (master 0, workers 1..), WORLD_SIZE the pods times
    PET_NPROC_PER_NODE (the operator's nprocPerNode; older operators: the pods alone)."""
    rank, world_size = int_var(environ, "RANK"), int_var(environ, "WORLD_SIZE")
    nproc = environ.get("PET_NPROC_PER_NODE", "1")
    local = environ.get("LOCAL_WORLD_SIZE", "1")
    several = (nproc.isdigit() and int(nproc) > 1) or (local.isdigit() and int(local) > 1)
    if several:
        told = f"PET_NPROC_PER_NODE={nproc}" if nproc.isdigit() and int(nproc) > 1 else f"LOCAL_WORLD_SIZE={local}"
        nnodes = "$PET_NNODES" if "PET_NNODES" in environ else "$WORLD_SIZE"
        command = _TORCHRUN_IN_POD.format(addr="$MASTER_ADDR", port="$MASTER_PORT").replace("$PET_NNODES", nnodes)
        if "PET_NODE_RANK" not in environ:
            command = command.replace("$PET_NODE_RANK", "$RANK")
        raise one_line(
            "WORLD_SIZE",
            f"is {world_size} while RANK={rank} counts pods (it is this pod's index), and this pod runs "
            f"{told.split('=')[1]} processes ({told}) not started by torchrun: they would all claim rank {rank} "
            f"and wait forever: use torchrun inside the pod: {command} (launch/pytorchjob_torchrun.yaml)",
        )
    if "PET_NNODES" in environ and environ["PET_NNODES"].isdigit() and int(environ["PET_NNODES"]) != world_size:
        raise one_line(
            "PET_NNODES",
            f"is {environ['PET_NNODES']} pods, but WORLD_SIZE={world_size} with one process per pod",
            "set nprocPerNode to 1, or use torchrun inside the pod (launch/pytorchjob_torchrun.yaml)",
        )
    master_addr = environ.get("MASTER_ADDR")
    master_port = int_var(environ, "MASTER_PORT") if "MASTER_PORT" in environ else None
    if world_size > 1 and (not master_addr or master_port is None):
        missing = "MASTER_ADDR" if not master_addr else "MASTER_PORT"
        raise EnvError(missing, f"is not set, but WORLD_SIZE={world_size}", "the PyTorchJob controller sets it")
    return validated(
        DistEnv("pytorchjob", rank, 0, world_size, 1, rank, master_addr, master_port),
        rank_var="RANK",
        world_var="WORLD_SIZE",
        local_var="LOCAL_RANK",
        local_world_var="PET_NPROC_PER_NODE",
    )


def from_pet_without_torchrun(environ: Mapping[str, str]) -> DistEnv:
    """TrainJob (or PyTorchJob's elastic form) hands torchrun its flags as PET_<FLAG>; a process started
    without torchrun would train alone on each pod. One node of one process is one process."""
    nnodes, nproc = environ.get("PET_NNODES", "1"), environ.get("PET_NPROC_PER_NODE", "1")
    if nnodes in ("1", "1:1") and nproc == "1":
        return DistEnv(source="single")
    addr = "$PET_MASTER_ADDR" if "PET_MASTER_ADDR" in environ else "$MASTER_ADDR"
    port = "$PET_MASTER_PORT" if "PET_MASTER_PORT" in environ else "$MASTER_PORT"
    command = (
        "torchrun -m distrain train CONFIG (torchrun reads every PET_<FLAG> itself), or "
        + _TORCHRUN_IN_POD.format(addr=addr, port=port)
    )
    if "PET_RDZV_ENDPOINT" in environ:
        command = "torchrun -m distrain train CONFIG (torchrun reads PET_RDZV_ENDPOINT and every PET_<FLAG> itself)"
    present = next(v for v in PET_VARS if v in environ)
    raise one_line(
        "PET_NNODES" if "PET_NNODES" in environ else present,
        f"is {environ.get('PET_NNODES', environ[present])!r} (with PET_NPROC_PER_NODE={nproc}): these are "
        f"torchrun's flags, and this process was not started by torchrun, so each pod would train alone: "
        f"start it with {command}",
    )


def check_pod_nodes(environ: Mapping[str, str]) -> None:
    """Under torchrun in a pod: the controller said PET_NNODES=N nodes, but torchrun formed a group of one
    node (`--standalone` or `--nnodes=1`, which win over PET_NNODES): every pod would train alone, on all
    the data, and none would say so."""
    nnodes, formed = environ.get("PET_NNODES", ""), environ.get("GROUP_WORLD_SIZE", "")
    if nnodes.isdigit() and int(nnodes) > 1 and formed == "1":
        raise one_line(
            "PET_NNODES",
            f"is {nnodes} pods, but torchrun formed a group of this pod alone (GROUP_WORLD_SIZE=1: --standalone "
            "or --nnodes=1), so each pod would train alone: drop them (torchrun reads PET_NNODES itself) or "
            "pass --nnodes=$PET_NNODES --node_rank=$PET_NODE_RANK",
        )


def platform(environ: Mapping[str, str]) -> str:
    """The outer launcher torchrun runs in, from what it leaves in the environment."""
    # dist.ddp's role environment has TORCHX_TRACKING_EXPERIMENT_NAME on every node; TORCHX_RANK0_HOST is
    # node 0's alone on Kubernetes (the others get Volcano's VC_<ROLE>_0_HOSTS).
    if any(v in environ for v in ("TORCHX_RANK0_HOST", "TORCHX_JOB_ID", "TORCHX_TRACKING_EXPERIMENT_NAME")):
        return "torchx"
    if any(v in environ for v in PET_VARS):
        return "kubeflow"  # TrainJob (which runs on a JobSet), PyTorchJob
    if "JOBSET_NAME" in environ:
        return "jobset"
    return ""
