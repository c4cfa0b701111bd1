"""How do I join the group? Process-group setup and teardown, plus collective helpers.

    with distributed(env, backend="auto", timeout_s=900, device="auto") as ctx:
        ...              # ctx.rank, ctx.world_size, ctx.device
    # the group is destroyed here, also when the body raised

The helpers below (`barrier`, `all_reduce_sum`, `broadcast_object`, `all_true`) are no-ops in one process,
so the training code never branches on "am I distributed?". Each one is a collective when a group exists:
**every rank must call it**, in the same order; never call one under `if rank == 0`.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import re
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as tdist

from distrain.errors import EnvError, UserError
from distrain.launch.env import DistEnv

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job and the device it trains on."""

    env: DistEnv
    device: torch.device
    backend: str | None  # None: one process, no group

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0


def pick_device(env: DistEnv, device: str) -> torch.device:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            "trainer.device is 'cuda' but CUDA is not available on this machine",
            "use trainer.device=auto or trainer.device=cpu",
        )
    count = torch.cuda.device_count()
    # One device per local rank: the launcher starts one process per GPU on each node.
    if env.local_rank >= count:
        raise UserError(
            f"local rank {env.local_rank} has no GPU: this node has {count}",
            "start at most one process per GPU (torchrun --nproc_per_node, srun --ntasks-per-node)",
        )
    return torch.device("cuda", env.local_rank)


def pick_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UserError(
            "dist.backend is 'nccl' but training runs on the CPU; NCCL only moves CUDA tensors",
            "use dist.backend=gloo (or auto) on CPU",
        )
    return backend


@contextlib.contextmanager
def distributed(
    env: DistEnv, *, backend: str = "auto", timeout_s: float = 900.0, device: str = "auto"
) -> Iterator[DistContext]:
    """Join the process group for the duration of the block; one process joins nothing.

    Idempotent: a group that already exists (set up by a caller, or by Ray Train) is reused and left for its
    owner to destroy (see `adopt_existing_group`).
    """
    env = adopt_existing_group(env)
    dev = pick_device(env, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not env.is_distributed:
        yield DistContext(env, dev, None)
        return
    owns_group = not tdist.is_initialized()
    # A group made by its owner (Ray Train, the user's own script) keeps the backend it was made with.
    chosen = pick_backend(backend, dev) if owns_group else tdist.get_backend()
    if owns_group:
        # Before the group exists: torch.distributed.nn.functional (imported when DDP is first built) takes
        # `group.WORLD` as the default argument of its functions when it is imported. Imported after
        # init_process_group, it held the group for the life of the process: destroy_process_group below
        # left the group's gloo threads (pt_gloo_runloop x2, gloo_tcp_loop) running into interpreter
        # teardown, the hazard behind "terminate called without an active exception" at exit that
        # pytorch#179291 describes (a gloo thread freeing a tensor once Python is gone). Imported first,
        # its defaults are None and the threads are joined here (tests/test_dist.py counts them). The
        # `as` name binds no local `torch` (which would shadow the module above).
        import torch.distributed.nn.functional as _reads_group_world  # noqa: F401

        kwargs: dict[str, Any] = {}
        if dev.type == "cuda":
            # Binds NCCL's communicator to this device eagerly (no guessing from the current device).
            kwargs["device_id"] = dev
        timeout = datetime.timedelta(seconds=timeout_s)
        tdist.init_process_group(
            chosen,
            store=_rendezvous_store(env, timeout),
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout,
            **kwargs,
        )
    try:
        yield DistContext(env, dev, chosen)
    except BaseException as exc:
        # An exception keeps its frames' locals alive until it is handled, after the teardown below: the
        # wrapped model of the step that failed (DDP's reducer holds the group) among them. Cleared, they let
        # the group go when it is destroyed; the traceback's text needs no locals.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        if owns_group and tdist.is_initialized():
            # Free what still holds the group's pending work (DDP's reducer sits in reference cycles)
            # while the interpreter is fully alive: freed later, during interpreter shutdown, gloo work
            # objects that reference tensors abort the process ("terminate called without an active
            # exception"; seen here about once in eight torchrun runs).
            gc.collect()
            global _CPU_GROUP
            _CPU_GROUP = None  # destroyed with the default group
            tdist.destroy_process_group()


def adopt_existing_group(env: DistEnv) -> DistEnv:
    """The launch as an already-initialised process group has it: such a group (made by Ray Train before
    the training function runs, or by the user's own script) is used as is, never a second one made, and
    it is left for its owner to destroy. Its rank and size must be the launcher's: a group of another
    shape means the variables describe another job. With no launcher variables (one process by the
    environment), the group's own rank and size are taken."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return env
    rank, size = tdist.get_rank(), tdist.get_world_size()
    if env.source == "single" and size > 1:
        import os

        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistEnv("process group", rank, local, size, max(local + 1, 1), 0)
    if (rank, size) != (env.rank, env.world_size):
        raise EnvError(
            "WORLD_SIZE",
            f"says rank {env.rank} of {env.world_size} ({env.launcher}), but the process group already "
            f"initialised in this process is rank {rank} of {size}: the variables describe another job",
        )
    return env


def _rendezvous_store(env: DistEnv, timeout: datetime.timedelta) -> tdist.Store:
    """The key-value store the ranks meet in, namespaced per torchrun restart attempt.

    Why not init_method="env://": after `torchrun --max-restarts` restarts the workers, they reuse the
    agent's store, which still holds the previous attempt's keys. A new worker can then read a killed
    peer's stale gloo address and fail with "connection refused" (seen here, about one restart in
    three). Prefixing every key with the attempt number makes each attempt meet only its own peers. The
    world size is in the prefix too: an elastic agent that restarts its workers because a node joined
    (`--nnodes=MIN:MAX`) keeps its restart count, but the new round has more processes. And so is the
    number of groups this process made before: a script that calls distrain.fit several times (a sweep)
    makes a group per call, and the second would otherwise meet the first one's keys and hang.
    """
    global _GROUPS_MADE
    _GROUPS_MADE += 1
    # With the agent's store, every worker is a client; otherwise rank 0 hosts the store (SLURM, or a
    # torchrun that does not share its store).
    is_host = env.rank == 0 and not env.uses_agent_store
    store = tdist.TCPStore(
        env.master_addr, env.master_port, env.world_size, is_master=is_host, timeout=timeout, wait_for_workers=False
    )
    return tdist.PrefixStore(f"distrain/attempt_{env.restart_count}/world_{env.world_size}/{_GROUPS_MADE}", store)


_GROUPS_MADE = 0  # process groups made by this process (every rank makes as many: one per fit)


# ------------------------------------------------------------------------------------- a lost peer

# What gloo and NCCL say when a collective fails because a peer is gone: its process died (the connection
# closed or was reset, a write to it failed) or it stopped answering until the group's timeout. Matched on
# the message because both raise a plain RuntimeError (gloo) or DistBackendError for any failure, bugs too.
_PEER_GONE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|Timed out waiting \d+ ?ms"
    r"|remote process exited|communicator was aborted|Watchdog caught collective operation timeout"
)


def peer_gone(exc: BaseException, *, rank: int, world_size: int) -> str | None:
    """What `exc` says when it is a collective that failed because a peer is gone ("rank 1 (Connection
    closed by peer [10.0.0.2]:2468)"), naming the lost rank when it is known: with two ranks, the other
    one; with more, gloo names only the peer's address. None for any other error (a bug keeps its
    traceback). The exception and its explicit cause are read, not the exceptions it was raised while
    handling: a bug in the cleanup after a lost peer is still a bug."""
    for error in (exc, exc.__cause__):
        if error is None:
            continue
        if isinstance(error, tdist.DistNetworkError) or (
            isinstance(error, RuntimeError) and _PEER_GONE.search(str(error))
        ):
            # "[.../pair.cc:561] Connection closed by peer [127.0.0.1]:2468. This is typically caused by..."
            said = re.sub(r"^\[[^\]]*\.(cc|cpp):\d+\]\s*", "", str(error).strip().splitlines()[0])
            said = said.split(". ")[0].rstrip(".")
            who = f"rank {1 - rank}" if world_size == 2 else "a peer"
            return f"{who} ({said})"
    return None


# ---------------------------------------------------------------------- collectives (no-ops alone)


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


class _InCollective:
    """Which of distrain's collectives this rank is in, and its sequence number (this rank's count of them
    so far): read by the hang watchdog (distrain.launch.watchdog) from its own thread when no step has
    finished for trainer.hang_timeout. Two attribute writes per collective; nothing else."""

    __slots__ = ("name", "seq", "failed")

    def __init__(self) -> None:
        self.name: str | None = None
        self.seq = 0
        self.failed: tuple[str, int] | None = None  # the collective that raised, and its number

    def enter(self, name: str) -> None:
        self.seq += 1
        self.name = name

    def leave(self) -> None:
        self.name = None


IN_COLLECTIVE = _InCollective()


def tracked(name: str, call: Callable[[], T]) -> T:
    """`call()` (a collective named `name`), recorded in IN_COLLECTIVE while it runs."""
    IN_COLLECTIVE.enter(name)
    try:
        return call()
    except BaseException:
        IN_COLLECTIVE.failed = (name, IN_COLLECTIVE.seq)
        raise
    finally:
        IN_COLLECTIVE.leave()


_CPU_GROUP: Any = None


def world_size() -> int:
    """The number of ranks in the process group (1 in one process)."""
    return tdist.get_world_size() if is_distributed() else 1


def cpu_group() -> Any:
    """A process group for small CPU-side control messages: the default group when it is gloo, else a gloo
    group over the same ranks (created once; collective on first use). With NCCL, a flag read on the host
    would otherwise need a device tensor and a device sync."""
    global _CPU_GROUP
    if tdist.get_backend() == "gloo":
        return None  # the default group
    if _CPU_GROUP is None:
        _CPU_GROUP = tdist.new_group(backend="gloo")
    return _CPU_GROUP


def barrier() -> None:
    """Wait for every rank. Collective: every rank must call it."""
    if not is_distributed():
        return
    if tdist.get_backend() == "nccl":
        tracked("barrier", lambda: tdist.barrier(device_ids=[torch.cuda.current_device()]))
    else:
        tracked("barrier", tdist.barrier)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place, and return it. Collective: every rank must call it."""
    if is_distributed():
        tracked("all_reduce", lambda: tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM))
    return tensor


def start_all_reduce_sum(tensor: torch.Tensor) -> Any:
    """Start summing `tensor` over all ranks in place, without waiting: returns a handle whose `wait()`
    finishes it (None in one process: nothing to wait for). Collective, in the same order on every rank."""
    if is_distributed():
        return tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM, async_op=True)
    return None


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum over all ranks, in place, and return it. Collective."""
    if is_distributed():
        tracked("all_reduce", lambda: tdist.all_reduce(tensor, op=tdist.ReduceOp.MIN))
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over all ranks, in place, and return it. Collective."""
    if is_distributed():
        tracked("all_reduce", lambda: tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX))
    return tensor


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s values into `tensor` on every rank, in place. Collective."""
    if is_distributed():
        tracked("broadcast", lambda: tdist.broadcast(tensor, src=src))
    return tensor


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` is true on every rank. Collective: every rank must call it."""
    if not is_distributed():
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int32, device=device)
    tracked("all_reduce", lambda: tdist.all_reduce(t, op=tdist.ReduceOp.SUM))
    return int(t.item()) == 0


def any_true(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank. Collective: every rank must call it."""
    return not all_true(not flag, device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank. Collective: every rank must call it."""
    if not is_distributed():
        return obj
    box = [obj]
    tracked("broadcast", lambda: tdist.broadcast_object_list(box, src=src))
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order. Collective: every rank must call it."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tracked("all_gather", lambda: tdist.all_gather_object(out, obj))
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj`, in rank order, at rank `dst` alone (None elsewhere): for what one rank writes.
    On the CPU group (with NCCL the default group would stage each object on a GPU). Collective."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * tdist.get_world_size() if tdist.get_rank() == dst else None
    group = cpu_group()
    where = dst if group is None else tdist.get_global_rank(group, dst)
    tracked("gather", lambda: tdist.gather_object(obj, out, dst=where, group=group))
    return out


def raise_agreed(problem: tuple[str, str | None] | None, error: type[UserError] = UserError) -> None:
    """Raise `error(message, hint)` marked agreed (every rank raises it; the first to report it prints it), if
    `problem`: a (message, hint) that every rank holds alike (broadcast or gathered first)."""
    if problem is not None:
        exc = error(*problem)
        exc.agreed = True
        raise exc from None  # the user's message alone, not the exception being handled behind it


def rank0_decides(decide: Callable[[], T], is_main: bool, error: type[UserError] = UserError) -> T:
    """Rank 0 runs `decide()`; every rank returns what it returned, or raises the user error it raised (as
    `error`, agreed): a rank that stopped alone would leave the others waiting. Collective."""
    result, problem = None, None
    if is_main:
        try:
            result = decide()
        except UserError as exc:
            problem = (exc.message, exc.hint)
    result, problem = broadcast_object((result, problem))
    raise_agreed(problem, error)
    return result
