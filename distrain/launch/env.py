"""Who am I? Launch-environment detection as a pure function of the environment mapping.

    env = detect(os.environ)   # -> DistEnv(source, rank, local_rank, world_size, ..., master_addr, master_port)

One resolver for every launch contract. Detectors are tried in this order, and the first that claims the
environment wins:

1. torchrun (TORCHELASTIC_RUN_ID): RANK / WORLD_SIZE / LOCAL_RANK from torchrun's agent. Tried first because
   torchrun runs inside every other launcher: a SLURM allocation (`srun torchrun ...`), a Kubernetes pod
   (PyTorchJob's torchrun form, TrainJob, JobSet) or a TorchX job; there the outer launcher's variables
   describe the *agent* (its pod, its node), not the worker. `platform` names the outer one when its
   variables are left in the environment (PET_* : Kubeflow, JOBSET_NAME : JobSet, TORCHX_* : TorchX).
2. Ray Train (RANK etc. with RAY_RAYLET_PID, and no torchrun): the worker actor's process group is already
   initialised by Ray; dist.py uses it as is.
3. Any env:// launcher that sets RANK / WORLD_SIZE / LOCAL_RANK itself.
4. Kubeflow PyTorchJob v1, one process per pod: RANK and WORLD_SIZE without LOCAL_RANK, in a Kubernetes pod
   (PET_NNODES or KUBERNETES_SERVICE_HOST). Its trap: a pod told to run several processes
   (PET_NPROC_PER_NODE > 1) whose process was not started by torchrun: RANK counts pods, so the processes
   would wait for peers that never come; refused, naming WORLD_SIZE and the torchrun command to use.
5. TrainJob (Trainer v2) or PyTorchJob's elastic form without torchrun: PET_* alone mean nothing to torch;
   refused, naming PET_NNODES and the torchrun command to use (one node of one process is one process).
6. SLURM under srun: SLURM_PROCID together with SLURM_STEP_ID. The batch script itself also has
   SLURM_PROCID=0 (and SLURM_NTASKS when --ntasks is given) but no step id; treating the batch shell as
   rank 0 of N would wait forever for N-1 processes that nobody started, so without a step it is one process.
7. Nothing: one process, no process group.

Nothing here touches os.environ or torch: every launch mode is testable by passing a dict. The Kubernetes
contracts are read in kubernetes.py, Ray Train's in ray_train.py, DistEnv and the shared checks in contract.py.
"""

from __future__ import annotations

import re
from typing import Mapping

from distrain.errors import EnvError
from distrain.launch.contract import DistEnv, int_var, validated
from distrain.launch.kubernetes import (
    PET_VARS,
    check_pod_nodes,
    from_pet_without_torchrun,
    from_pytorchjob,
    is_pod_without_torchrun,
    platform,
)
from distrain.launch.ray_train import from_ray

__all__ = ["DistEnv", "detect", "expand_nodelist", "parse_tasks_per_node"]

# Lightning's choice too: keeps derived ports clear of well-known ports and of the ephemeral range.
_SLURM_PORT_BASE = 15000
_SLURM_PORT_SPAN = 20000


def detect(environ: Mapping[str, str]) -> DistEnv:
    """Read the launcher's variables from `environ`. Raises EnvError when they are inconsistent."""
    if "TORCHELASTIC_RUN_ID" in environ:
        return _from_torchrun(environ)
    if "RAY_RAYLET_PID" in environ and "RANK" in environ:
        return from_ray(environ)
    if is_pod_without_torchrun(environ):
        return from_pytorchjob(environ)
    if _claims_torchrun(environ):
        return _from_torchrun(environ)
    if any(v in environ for v in PET_VARS):
        return from_pet_without_torchrun(environ)
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        return _from_slurm(environ)
    return DistEnv(source="single")


# ------------------------------------------------------------------------------------------- torchrun

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _claims_torchrun(environ: Mapping[str, str]) -> bool:
    present = [v for v in _TORCHRUN_VARS if v in environ]
    if present and len(present) < len(_TORCHRUN_VARS):
        missing = [v for v in _TORCHRUN_VARS if v not in environ]
        raise EnvError(
            missing[0],
            f"is not set, but {', '.join(present)} is",
            "start distrain with torchrun (which sets all of them), or unset the partial set",
        )
    return bool(present) or "TORCHELASTIC_RUN_ID" in environ


def _from_torchrun(environ: Mapping[str, str]) -> DistEnv:
    for var in _TORCHRUN_VARS:
        if var not in environ:
            raise EnvError(var, "is not set although TORCHELASTIC_RUN_ID is", "start distrain with torchrun")
    rank = int_var(environ, "RANK")
    world_size = int_var(environ, "WORLD_SIZE")
    local_rank = int_var(environ, "LOCAL_RANK")
    local_world_size = int_var(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else world_size
    node_rank = int_var(environ, "GROUP_RANK") if "GROUP_RANK" in environ else 0
    master_addr = environ.get("MASTER_ADDR")
    master_port = int_var(environ, "MASTER_PORT") if "MASTER_PORT" in environ else None
    if world_size > 1:
        if not master_addr:
            raise EnvError(
                "MASTER_ADDR",
                f"is not set, but WORLD_SIZE={world_size}",
                "torchrun sets it; when launching by hand, export MASTER_ADDR and MASTER_PORT",
            )
        if master_port is None:
            raise EnvError(
                "MASTER_PORT",
                f"is not set, but WORLD_SIZE={world_size}",
                "torchrun sets it; when launching by hand, export MASTER_ADDR and MASTER_PORT",
            )
    restart_count = int_var(environ, "TORCHELASTIC_RESTART_COUNT") if "TORCHELASTIC_RESTART_COUNT" in environ else 0
    check_pod_nodes(environ)  # a pod's torchrun that formed a group of its own
    uses_agent_store = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return validated(
        DistEnv(
            "torchrun",
            rank,
            local_rank,
            world_size,
            local_world_size,
            node_rank,
            master_addr,
            master_port,
            restart_count,
            uses_agent_store,
            platform(environ),
        ),
        rank_var="RANK",
        world_var="WORLD_SIZE",
        local_var="LOCAL_RANK",
        local_world_var="LOCAL_WORLD_SIZE",
    )


# ---------------------------------------------------------------------------------------------- SLURM


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    rank = int_var(environ, "SLURM_PROCID")
    local_rank = int_var(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0
    world_var = "SLURM_NTASKS" if "SLURM_NTASKS" in environ else "SLURM_NPROCS"
    if world_var not in environ:
        raise EnvError("SLURM_NTASKS", "is not set inside an srun step", "run the job step with srun --ntasks=N")
    world_size = int_var(environ, world_var)
    node_rank = int_var(environ, "SLURM_NODEID") if "SLURM_NODEID" in environ else 0
    tasks_var = "SLURM_STEP_TASKS_PER_NODE" if "SLURM_STEP_TASKS_PER_NODE" in environ else "SLURM_TASKS_PER_NODE"
    if tasks_var in environ:
        per_node = parse_tasks_per_node(environ[tasks_var], tasks_var)
        if node_rank >= len(per_node):
            raise EnvError(
                "SLURM_NODEID",
                f"is {node_rank}, but {tasks_var}={environ[tasks_var]!r} describes only {len(per_node)} node(s)",
            )
        local_world_size = per_node[node_rank]
    else:
        local_world_size = world_size
    master_addr = environ.get("MASTER_ADDR")
    if not master_addr and world_size > 1:
        # The step's first node runs task 0 (block distribution); a step may use fewer nodes than the
        # job, so its own node list is the right one when SLURM gives it.
        # SLURM_NODELIST: the older name, still the only one some sites' wrappers set.
        list_var = next(
            (v for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if v in environ), None
        )
        if list_var is None:
            raise EnvError(
                "SLURM_JOB_NODELIST",
                "is not set inside an srun step (nor SLURM_STEP_NODELIST or SLURM_NODELIST)",
                "export MASTER_ADDR to the host that runs task 0",
            )
        master_addr = expand_nodelist(environ[list_var], list_var)[0]
    if "MASTER_PORT" in environ:
        master_port = int_var(environ, "MASTER_PORT")
    elif world_size > 1:
        if "SLURM_JOB_ID" not in environ:
            raise EnvError(
                "SLURM_JOB_ID",
                "is not set, so no rendezvous port can be derived",
                "export MASTER_PORT to a free port on the first host",
            )
        # Derived from the job id so that two jobs sharing a node do not pick the same port.
        master_port = _SLURM_PORT_BASE + int_var(environ, "SLURM_JOB_ID") % _SLURM_PORT_SPAN
    else:
        master_port = None
    return validated(
        DistEnv("slurm", rank, local_rank, world_size, local_world_size, node_rank, master_addr, master_port),
        rank_var="SLURM_PROCID",
        world_var=world_var,
        local_var="SLURM_LOCALID",
        local_world_var=tasks_var,
    )


def expand_nodelist(nodelist: str, variable: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Expand SLURM's compact host list as `scontrol show hostnames` does: `gpu[01-04,07],cpu3` -> gpu01
    gpu02 gpu03 gpu04 gpu07 cpu3. Items are separated by commas or whitespace; zero padding is kept; a
    name with several bracket groups expands as a product in SLURM's order (the last group fastest, then
    the first, the second, ...: `a[1-2]b[1-2]c[1-2]` -> a1b1c1 a1b1c2 a2b1c1 a2b1c2 a1b2c1 ...).
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist, variable):
        hosts.extend(_expand_one(item, nodelist, variable))
    if not hosts:
        raise EnvError(variable, f"{nodelist!r} names no host")
    return hosts


def _split_top_level(text: str, variable: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise EnvError(variable, f"{text!r} has an unmatched ']'")
        elif (ch == "," or ch.isspace()) and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise EnvError(variable, f"{text!r} has an unmatched '['")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_one(item: str, whole: str, variable: str) -> list[str]:
    import itertools

    pieces = re.split(r"\[([^\]]*)\]", item)  # literal, group, literal, group, ..., literal
    literals, groups = pieces[0::2], [_range_names(g, whole, variable) for g in pieces[1::2]]
    if not groups:
        return [item]
    k = len(groups)
    # SLURM's order, slowest-varying first: groups k-2, ..., 1, 0, then k-1 (the fastest).
    order = [*range(k - 2, -1, -1), k - 1] if k > 1 else [0]
    hosts = []
    for combo in itertools.product(*(groups[i] for i in order)):
        chosen = dict(zip(order, combo))
        hosts.append("".join(lit + (chosen[i] if i < k else "") for i, lit in enumerate(literals)))
    return hosts


def _range_names(text: str, whole: str, variable: str) -> list[str]:
    names = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise EnvError(variable, f"{whole!r} has a bad range {part!r} (expected N or N-M)")
        if not dash:
            names.append(lo)
            continue
        if int(hi) < int(lo):
            raise EnvError(variable, f"{whole!r} has a descending range {part!r}")
        width = len(lo)
        names.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return names


def parse_tasks_per_node(text: str, variable: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Expand SLURM's tasks-per-node form: `2(x3),1` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise EnvError(variable, f"{text!r} is not of the form N or N(xM), comma-separated")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts
