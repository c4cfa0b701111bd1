"""Checkpoints written in the background (checkpoint.async_save: true): training goes on while a save is
written from a staged copy; at most one write is in flight.

    saves = BackgroundSaves(sharded=...)   # on every rank (it may create a process group)
    saves.wait()                           # collective: the previous write has finished everywhere, or
                                           # every rank raises the same error
    saves.submit(write)                    # `write` runs in this rank's writer thread
    saves.close(agree=True)                # the last write finished (and agreed on), the thread joined

The save contract is unchanged (atomic, verified, manifest last): the background thread runs the same
steps as a synchronous save. A kill while it runs leaves what a killed synchronous save leaves, a
temporary file or folder that resume ignores: only that checkpoint is lost.

A background save must never cost training more than a synchronous one. The training thread's share is
the staging copy; the writer's (serialising, hashing, writing) is the same work a synchronous save does,
and where every core computes (2 ranks on 2 cores) it can only come out of training's CPU time. So the
writer thread runs at the lowest scheduling priority while training runs (`WriterPriority`): it gets the
cores' idle moments (the ranks waiting for each other in their collectives, the data loading) and
training keeps the rest; with a free core it runs there at full speed. When training waits for it (the
next save, the end of the run) the write is what training waits on, and it gets its normal priority
back where the process may raise one. Every part of the write runs in that thread (sharded too: DCP's
own async_save would write from a thread it starts at the training thread's priority).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import threading
import weakref
from typing import Any, Callable

import torch
import torch.distributed as tdist

from distrain.errors import UserError
from distrain.launch import dist

log = logging.getLogger("distrain")


def staged(tree: Any) -> Any:
    """A copy of `tree` whose tensors are CPU copies: what a background write serializes while training
    changes the live tensors."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {key: staged(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)([staged(value) for value in tree])
    return tree


def step_owned(model: torch.nn.Module, optimizer: Any) -> set[int]:
    """The storages (their data pointers) that only an optimizer step changes: the parameters' (a sharded
    parameter's local shard) and every optimizer's state tensors. Buffers are not among them (a forward in
    train mode changes BatchNorm's running statistics). Empty when an optimizer is not a torch.optim.Optimizer.
    """

    def ptr(t: torch.Tensor) -> int:
        return getattr(t, "_local_tensor", t).untyped_storage().data_ptr()

    optimizers = list(getattr(optimizer, "optimizers", {"": optimizer}).values())  # loop/several.py's set
    if not all(isinstance(opt, torch.optim.Optimizer) for opt in optimizers):
        return set()  # a step of its own kind would not wait (no step hooks): everything is copied at once
    owned = {ptr(p) for p in model.parameters()}
    for opt in optimizers:
        owned.update(ptr(t) for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor))
    return owned


class _Deferred:
    """What a staging left to the writer thread: (buffer, live tensor) pairs whose storage only an optimizer
    step changes (step_owned), on the CPU. Why: with a core free, the writer copies them while training runs
    the next forward and backward, and the training thread pays only for the rest (timed here, fsdp in one
    process, 805 MB: 0.25 s of the training thread's time a save, 0.16 s of it the copy); the next optimizer
    step waits for the copy first (BackgroundSaves.until_staged), as torchtitan waits for its staging
    before the optimizer step. On a GPU the copy to pinned memory is a DMA, made at once."""

    def __init__(self, owned: set[int]) -> None:
        self.owned = owned
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def take(self, buffer: torch.Tensor, live: torch.Tensor) -> bool:
        """Leave buffer.copy_(live) to the writer when it may wait; whether it was left."""
        if live.is_cuda or live.untyped_storage().data_ptr() not in self.owned:
            return False
        self.pairs.append((buffer, live.detach()))
        return True

    def copy(self) -> None:
        with torch.no_grad():
            for buffer, live in self.pairs:
                buffer.copy_(live)


class Staging:
    """`staged`, but into CPU buffers kept from one save to the next. Why: a fresh copy of a large state
    pays for the first touch of every page (timed by hand here, 70M parameters with AdamW, 805 MB: 0.70 s
    on the training thread, against 0.15 s into kept buffers). The buffers stay allocated between saves (one CPU
    copy of what is saved); reusing them is safe because a save first waits for the previous write. Pinned
    when the tensor is on a GPU, so the copy from the device is a DMA. `owned` (step_owned): those tensors'
    copies are left to the writer (`deferred`, see _Deferred)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.deferred = _Deferred(set())

    def stage(self, tree: Any, owned: set[int] | None = None) -> Any:
        self.deferred = _Deferred(owned or set())
        return self._stage(tree, ())

    def _stage(self, tree: Any, where: tuple) -> Any:
        if type(tree) is torch.Tensor:
            buffer = self._buffers.get(where)
            if buffer is None or buffer.shape != tree.shape or buffer.dtype != tree.dtype:
                buffer = torch.empty(tree.shape, dtype=tree.dtype, pin_memory=tree.is_cuda)
                self._buffers[where] = buffer
            return buffer if self.deferred.take(buffer, tree) else buffer.copy_(tree.detach())
        if isinstance(tree, torch.Tensor):  # a tensor subclass: a copy of its own kind
            return staged(tree)
        if isinstance(tree, dict):
            return {key: self._stage(value, (*where, key)) for key, value in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)([self._stage(value, (*where, i)) for i, value in enumerate(tree)])
        return tree


class ShardStaging:
    """Staging for a sharded state (what dcp.save then writes from the writer thread): the shards' CPU
    copies (DTensors' local tensors) are kept from one save to the next, and made again only when the
    state's layout changed (e.g. the optimizer's state appears after its first step). torch's
    BlockingAsyncStager(cache_staged_state_dict=True) does the same but pins memory always, which fails on
    a machine without a GPU. `owned`: as Staging's."""

    def __init__(self) -> None:
        self._cache: Any = None
        self._layout: Any = None
        self.deferred = _Deferred(set())

    def stage(self, state_dict: dict[str, Any], owned: set[int] | None = None) -> dict[str, Any]:
        layout = _layout(state_dict)
        if layout != self._layout:
            self._cache = _empty_like(state_dict)
            self._layout = layout
        self.deferred = _Deferred(owned or set())
        return self._fill(self._cache, state_dict)

    def _fill(self, cache: Any, live: Any) -> Any:
        """The staged tree: `cache`'s tensors holding (or, deferred, about to hold) `live`'s values; the
        values that are not tensors are live's (the state dicts' own fresh ones)."""
        if isinstance(live, torch.Tensor):
            buffer, source = getattr(cache, "_local_tensor", cache), getattr(live, "_local_tensor", live)
            if not self.deferred.take(buffer, source):
                with torch.no_grad():
                    buffer.copy_(source)
            return cache
        if isinstance(live, dict):
            return {key: self._fill(cache[key], value) for key, value in live.items()}
        if isinstance(live, (list, tuple)):
            return type(live)(self._fill(c, value) for c, value in zip(cache, live))
        return live


@torch.no_grad()
def _empty_like(tree: Any) -> Any:
    """Empty CPU tensors shaped as `tree`'s, DTensors as DTensors of the same spec (torch's
    _create_cpu_state_dict, without its copy of every CPU DTensor that it then drops: copy.deepcopy
    before swapping in an empty local tensor, which doubled the first save's staging, 0.33 s of 0.6 s
    for 400 MB here). Pinned when the tensor is on a GPU (the copy from the device is then a DMA)."""
    from torch.distributed.tensor import DTensor

    def empty(t: torch.Tensor) -> torch.Tensor:
        if t.numel() == 0 or t.dim() == 0:  # as torch's own: nothing to pin
            return torch.zeros(t.shape, dtype=t.dtype)
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)

    if isinstance(tree, DTensor):
        return DTensor(empty(tree._local_tensor), tree._spec, requires_grad=False)
    if isinstance(tree, torch.Tensor):
        return empty(tree)
    if isinstance(tree, dict):
        return {key: _empty_like(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_empty_like(value) for value in tree)
    return tree


def _layout(tree: Any) -> Any:
    """What a kept copy must match: the nesting, and every tensor's kind, local shape and dtype."""
    if isinstance(tree, torch.Tensor):
        local = getattr(tree, "_local_tensor", tree)
        return (type(tree).__name__, tuple(local.shape), local.dtype)
    if isinstance(tree, dict):
        return tuple((key, _layout(value)) for key, value in tree.items())
    if isinstance(tree, (list, tuple)):
        return tuple(_layout(value) for value in tree)
    return type(tree).__name__


class WriterPriority:
    """The writer thread's scheduling priority (Linux; elsewhere nothing changes: a thread id there is no
    process id, and setting it could reach another process or the whole of this one).

    `lower()`, from the writer thread as each write starts: nice 19, for this thread alone (on Linux a
    thread is a task of its own; the training thread keeps its priority). `restore()`, from the training
    thread when it waits for the write: nice 0 again where the process may raise a priority (root,
    RLIMIT_NICE); elsewhere the write goes on at 19, and the waiting training thread leaves it its core.
    Why not SCHED_IDLE, which an unprivileged process may undo: it was no better. On 2 ranks of 2 cores
    (bench/sharding.py, each save's cost from the run's own step times, 2 rounds) a background save cost
    0.57x a synchronous one with it, 0.46x to 0.51x with nice 19; a shorter GIL switch interval (0.5 ms)
    changed nothing either (0.63x). Where every core computes, the writer's cost is its CPU, whatever its
    priority: what made background saves cheap there was a cheaper writer (direct writes, no second pass
    over the bytes, xxh3 checksums: distrain.checkpoint.files). Why not a writer process: it would need
    its own copy of the staged state (or shared memory) and its own process group for the shards'
    collectives, and the CPU it takes would come out of training just the same."""

    def __init__(self) -> None:
        self._tid: int | None = None
        self._waited_on = False  # the training thread waits for the write in flight

    def submitted(self) -> None:
        self._waited_on = False

    def lower(self) -> None:
        if sys.platform == "linux":
            self._tid = threading.get_native_id()
            self._set(19)
            if self._waited_on:  # training began to wait before this write started: not lowered after all
                self._set(0)

    def restore(self) -> None:
        self._waited_on = True
        if self._tid is not None:
            self._set(0)

    def _set(self, nice: int) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, self._tid, nice)
        except OSError:  # raising it back needs the privilege; lowering, a sandbox may refuse: as it was
            pass


class BackgroundSaves:
    def __init__(self, *, sharded: bool):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="distrain-save")
        self.priority = WriterPriority()
        self._pending: concurrent.futures.Future | None = None
        # A sharded write runs collectives (DCP's planning, the shards' checksums) from the writer threads.
        # On the default group they would interleave with training's all-reduces, which gloo detects as
        # a size mismatch and aborts on: they get a group of their own, created here by every rank alike.
        self.group = tdist.new_group(backend="gloo") if sharded and tdist.is_initialized() else None
        self.staging = Staging()  # rank 0's .pt payload
        self.shard_staging = ShardStaging() if sharded else None
        self._staged = threading.Event()  # the write's deferred copies are made (set: nothing to wait for)
        self._staged.set()
        self._hook: Any = None

    def submit(self, write: Callable[[], None]) -> None:
        """Run `write` in the writer thread, after the copies the stagings left to it (_Deferred); until
        they are made, any optimizer step waits (torch's global step pre-hook, so a user's step that steps
        its optimizers itself waits too; the trainer also calls until_staged before a step of several
        models, whose step may change weights by other means)."""
        assert self._pending is None, "wait() before submitting the next write"
        # What this save's stagings left (each staging starts a fresh _Deferred: a save stages, then submits).
        deferred = [s.deferred for s in (self.staging, self.shard_staging) if s is not None and s.deferred.pairs]
        if deferred:
            self._staged.clear()
            if self._hook is None:
                from torch.optim.optimizer import register_optimizer_step_pre_hook

                self._hook = register_optimizer_step_pre_hook(_until_staged(self))
        self.priority.submitted()
        try:
            self._pending = self._pool.submit(self._write, write, deferred)
        except BaseException:
            self._staged.set()  # never started: no step may wait for it
            raise

    def _write(self, write: Callable[[], None], deferred: list[_Deferred]) -> None:
        self.priority.lower()  # training goes on: the write takes only what training leaves
        try:
            for copies in deferred:
                copies.copy()
        finally:
            self._staged.set()  # also when a copy failed: the failure is the write's, reported by wait()
        write()

    def until_staged(self) -> None:
        """Return once the writer has copied what the staging left to it (at once when nothing is left):
        called before anything changes the weights or the optimizer's state."""
        if not self._staged.is_set():
            self.priority.restore()  # training waits for the copy: nothing to yield to
            self._staged.wait()

    def all_gather(self, obj: Any) -> list[Any]:
        """all_gather_object on the writers' own group (from the writer threads); [obj] in one process."""
        if self.group is None:
            return [obj]
        out: list[Any] = [None] * tdist.get_world_size(self.group)
        tdist.all_gather_object(out, obj, group=self.group)
        return out

    def _finish(self) -> tuple[str, str | None] | None:
        """Wait for this rank's write; its failure as (message, hint), or None."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if not pending.done():
            self.priority.restore()  # training waits for this write now: nothing to yield to
        try:
            pending.result()
        except UserError as exc:
            return exc.message, exc.hint
        except Exception as exc:  # noqa: BLE001 (a bug in the writer: reported, not swallowed)
            return f"a background checkpoint write failed: {type(exc).__name__}: {exc}", None
        return None

    def wait(self) -> None:
        """Collective: the previous write has finished on every rank; if it failed anywhere, every rank
        raises the first failure (the checkpoints before it are intact)."""
        problems = dist.all_gather_object(self._finish())
        dist.raise_agreed(next((p for p in problems if p is not None), None))

    def close(self, *, agree: bool) -> None:
        """Let the last write finish. `agree` (a normal end): collectively, raising its failure on every
        rank; otherwise (an exception is on its way out) this rank only waits and logs a failure."""
        try:
            if agree:
                self.wait()
            else:
                problem = self._finish()
                if problem is not None:
                    log.error("the last background checkpoint write failed: %s", problem[0])
        finally:
            self._pool.shutdown(wait=True)
            if self._hook is not None:
                self._hook.remove()
                self._hook = None


def _until_staged(saves: BackgroundSaves) -> Callable[..., None]:
    """The optimizer step pre-hook of `saves` (holding it weakly: a run's hook never keeps it alive)."""
    ref = weakref.ref(saves)

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        target = ref()
        if target is not None:
            target.until_staged()

    return hook
