"""What a launch resolves to: `DistEnv`, this process's place in the job, and the checks every launch
contract shares (integers, ranks inside their worlds). The contracts themselves: env.py (the order, torchrun,
SLURM), kubernetes.py (PyTorchJob, TrainJob, the PET_* traps), ray_train.py (Ray Train).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from distrain.errors import EnvError


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


def int_var(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        return int(text)
    except ValueError:
        raise EnvError(name, f"must be an integer, got {text!r}") from None


def validated(env: DistEnv, *, rank_var: str, world_var: str, local_var: str, local_world_var: str) -> DistEnv:
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


def one_line(variable: str, problem: str, hint: str | None = None) -> EnvError:
    """A trap's refusal: one line (its hint after a colon), so a pod's log shows it whole."""
    return EnvError(variable, problem if hint is None else f"{problem}: {hint}")
