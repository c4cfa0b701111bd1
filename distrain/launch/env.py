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

Nothing here touches os.environ or torch: every launch mode is testable by passing a dict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from distrain.errors import EnvError

# Lightning's choice too: keeps derived ports clear of well-known ports and of the ephemeral range.
_SLURM_PORT_BASE = 15000
_SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. `source` is "single", "torchrun", "ray", "pytorchjob" or "slurm";
    `platform` the outer launcher torchrun runs in, when known ("kubeflow", "jobset", "torchx"), else ""."""

    source: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    restart_count: int = 0  # torchrun: TORCHELASTIC_RESTART_COUNT (0 on the first attempt)
    uses_agent_store: bool = False  # torchrun: the agent hosts the TCPStore at MASTER_ADDR:MASTER_PORT
    platform: str = ""

    @property
    def launcher(self) -> str:
        """The launch as the run's header names it: `torchrun`, `torchrun on jobset`, `ray`, ..."""
        return f"{self.source} on {self.platform}" if self.platform else self.source

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ: Mapping[str, str]) -> DistEnv:
    """Read the launcher's variables from `environ`. Raises EnvError when they are inconsistent."""
    if "TORCHELASTIC_RUN_ID" in environ:
        return _from_torchrun(environ)
    if "RAY_RAYLET_PID" in environ and "RANK" in environ:
        return _from_ray(environ)
    if _is_pod_without_torchrun(environ):
        return _from_pytorchjob(environ)
    if _claims_torchrun(environ):
        return _from_torchrun(environ)
    if any(v in environ for v in _PET_VARS):
        return _from_pet_without_torchrun(environ)
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
    rank = _int(environ, "RANK")
    world_size = _int(environ, "WORLD_SIZE")
    local_rank = _int(environ, "LOCAL_RANK")
    local_world_size = _int(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else world_size
    node_rank = _int(environ, "GROUP_RANK") if "GROUP_RANK" in environ else 0
    master_addr = environ.get("MASTER_ADDR")
    master_port = _int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else None
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
    restart_count = _int(environ, "TORCHELASTIC_RESTART_COUNT") if "TORCHELASTIC_RESTART_COUNT" in environ else 0
    uses_agent_store = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return _validated(
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
            _platform(environ),
        ),
        rank_var="RANK",
        world_var="WORLD_SIZE",
        local_var="LOCAL_RANK",
        local_world_var="LOCAL_WORLD_SIZE",
    )


def _platform(environ: Mapping[str, str]) -> str:
    """The outer launcher torchrun runs in, from what it leaves in the environment."""
    # dist.ddp's role environment has TORCHX_TRACKING_EXPERIMENT_NAME on every node; TORCHX_RANK0_HOST is
    # node 0's alone on Kubernetes (the others get Volcano's VC_<ROLE>_0_HOSTS).
    if any(v in environ for v in ("TORCHX_RANK0_HOST", "TORCHX_JOB_ID", "TORCHX_TRACKING_EXPERIMENT_NAME")):
        return "torchx"
    if any(v in environ for v in _PET_VARS):
        return "kubeflow"  # TrainJob (which runs on a JobSet), PyTorchJob
    if "JOBSET_NAME" in environ:
        return "jobset"
    return ""


# ----------------------------------------------------------------------------------------- Ray Train


def _from_ray(environ: Mapping[str, str]) -> DistEnv:
    """Ray Train's worker: Ray sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK (and
    MASTER_ADDR/PORT) and has initialised the process group before the training function runs."""
    for var in (*_TORCHRUN_VARS, "LOCAL_WORLD_SIZE"):
        if var not in environ:
            raise EnvError(var, "is not set in a Ray Train worker", "call distrain.fit in a TorchTrainer loop")
    world_size = _int(environ, "WORLD_SIZE")
    return _validated(
        DistEnv(
            "ray",
            _int(environ, "RANK"),
            _int(environ, "LOCAL_RANK"),
            world_size,
            _int(environ, "LOCAL_WORLD_SIZE"),
            _int(environ, "NODE_RANK") if "NODE_RANK" in environ else 0,
            environ.get("MASTER_ADDR"),
            _int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else None,
        ),
        rank_var="RANK",
        world_var="WORLD_SIZE",
        local_var="LOCAL_RANK",
        local_world_var="LOCAL_WORLD_SIZE",
    )


# ------------------------------------------------------------------------------------------ Kubernetes

# What Kubeflow's controllers (PyTorchJob, TrainJob) set for torchrun: each names one of its flags.
_PET_VARS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_RDZV_ENDPOINT")
_TORCHRUN_IN_POD = (
    "torchrun --nnodes=$PET_NNODES --nproc_per_node=$PET_NPROC_PER_NODE --node_rank=$PET_NODE_RANK "
    "--master_addr={addr} --master_port={port} -m distrain train CONFIG"
)


def _is_pod_without_torchrun(environ: Mapping[str, str]) -> bool:
    """PyTorchJob v1's own contract: RANK and WORLD_SIZE but no LOCAL_RANK, in a Kubernetes pod."""
    in_pod = "PET_NNODES" in environ or "KUBERNETES_SERVICE_HOST" in environ
    return in_pod and "RANK" in environ and "WORLD_SIZE" in environ and "LOCAL_RANK" not in environ


def _from_pytorchjob(environ: Mapping[str, str]) -> DistEnv:
    """One process per pod: RANK is the pod's index (master 0, workers 1..), WORLD_SIZE the pods times
    PET_NPROC_PER_NODE (the operator's nprocPerNode; older operators: the pods alone)."""
    rank, world_size = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    nproc = environ.get("PET_NPROC_PER_NODE", "1")
    local = environ.get("LOCAL_WORLD_SIZE", "1")
    several = (nproc.isdigit() and int(nproc) > 1) or (local.isdigit() and int(local) > 1)
    if several:
        told = f"PET_NPROC_PER_NODE={nproc}" if nproc.isdigit() and int(nproc) > 1 else f"LOCAL_WORLD_SIZE={local}"
        nnodes = "$PET_NNODES" if "PET_NNODES" in environ else "$WORLD_SIZE"
        command = _TORCHRUN_IN_POD.format(addr="$MASTER_ADDR", port="$MASTER_PORT").replace("$PET_NNODES", nnodes)
        if "PET_NODE_RANK" not in environ:
            command = command.replace("$PET_NODE_RANK", "$RANK")
        raise _one_line(
            "WORLD_SIZE",
            f"is {world_size} while RANK={rank} counts pods (it is this pod's index), and this pod runs "
            f"{told.split('=')[1]} processes ({told}) not started by torchrun: they would all claim rank {rank} "
            f"and wait forever: use torchrun inside the pod: {command} (launch/pytorchjob_torchrun.yaml)",
        )
    if "PET_NNODES" in environ and environ["PET_NNODES"].isdigit() and int(environ["PET_NNODES"]) != world_size:
        raise _one_line(
            "PET_NNODES",
            f"is {environ['PET_NNODES']} pods, but WORLD_SIZE={world_size} with one process per pod",
            "set nprocPerNode to 1, or use torchrun inside the pod (launch/pytorchjob_torchrun.yaml)",
        )
    master_addr = environ.get("MASTER_ADDR")
    master_port = _int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else None
    if world_size > 1 and (not master_addr or master_port is None):
        missing = "MASTER_ADDR" if not master_addr else "MASTER_PORT"
        raise EnvError(missing, f"is not set, but WORLD_SIZE={world_size}", "the PyTorchJob controller sets it")
    return _validated(
        DistEnv("pytorchjob", rank, 0, world_size, 1, rank, master_addr, master_port),
        rank_var="RANK",
        world_var="WORLD_SIZE",
        local_var="LOCAL_RANK",
        local_world_var="PET_NPROC_PER_NODE",
    )


def _from_pet_without_torchrun(environ: Mapping[str, str]) -> DistEnv:
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
    present = next(v for v in _PET_VARS if v in environ)
    raise _one_line(
        "PET_NNODES" if "PET_NNODES" in environ else present,
        f"is {environ.get('PET_NNODES', environ[present])!r} (with PET_NPROC_PER_NODE={nproc}): these are "
        f"torchrun's flags, and this process was not started by torchrun, so each pod would train alone: "
        f"start it with {command}",
    )


def _one_line(variable: str, problem: str, hint: str | None = None) -> EnvError:
    """A trap's refusal: one line (its hint after a colon), so a pod's log shows it whole."""
    return EnvError(variable, problem if hint is None else f"{problem}: {hint}")


# ---------------------------------------------------------------------------------------------- SLURM


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    rank = _int(environ, "SLURM_PROCID")
    local_rank = _int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0
    world_var = "SLURM_NTASKS" if "SLURM_NTASKS" in environ else "SLURM_NPROCS"
    if world_var not in environ:
        raise EnvError("SLURM_NTASKS", "is not set inside an srun step", "run the job step with srun --ntasks=N")
    world_size = _int(environ, world_var)
    node_rank = _int(environ, "SLURM_NODEID") if "SLURM_NODEID" in environ else 0
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
        master_port = _int(environ, "MASTER_PORT")
    elif world_size > 1:
        if "SLURM_JOB_ID" not in environ:
            raise EnvError(
                "SLURM_JOB_ID",
                "is not set, so no rendezvous port can be derived",
                "export MASTER_PORT to a free port on the first host",
            )
        # Derived from the job id so that two jobs sharing a node do not pick the same port.
        master_port = _SLURM_PORT_BASE + _int(environ, "SLURM_JOB_ID") % _SLURM_PORT_SPAN
    else:
        master_port = None
    return _validated(
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


# --------------------------------------------------------------------------------------------- common


def _int(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        return int(text)
    except ValueError:
        raise EnvError(name, f"must be an integer, got {text!r}") from None


def _validated(env: DistEnv, *, rank_var: str, world_var: str, local_var: str, local_world_var: str) -> DistEnv:
    if env.world_size < 1:
        raise EnvError(world_var, f"must be >= 1, got {env.world_size}")
    if not 0 <= env.rank < env.world_size:
        raise EnvError(rank_var, f"is {env.rank}, outside [0, {env.world_size}) given by {world_var}")
    if not 1 <= env.local_world_size <= env.world_size:
        raise EnvError(
            local_world_var,
            f"gives {env.local_world_size} processes on this node, outside [1, {env.world_size}] given by {world_var}",
        )
    if not 0 <= env.local_rank < env.local_world_size:
        raise EnvError(local_var, f"is {env.local_rank}, outside [0, {env.local_world_size}) processes on this node")
    if env.master_port is not None and not 0 < env.master_port < 65536:
        raise EnvError("MASTER_PORT", f"must be a port number in 1..65535, got {env.master_port}")
    return env
