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


class Staging:
    """`staged`, but into CPU buffers kept from one save to the next. Why: a fresh copy of a large state
    pays for the first touch of every page (timed by hand here, 70M parameters with AdamW, 805 MB: 0.70 s
    on the training thread, against 0.15 s into kept buffers). The buffers stay allocated between saves (one CPU
    copy of what is saved); reusing them is safe because a save first waits for the previous write. Pinned
    when the tensor is on a GPU, so the copy from the device is a DMA."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def stage(self, tree: Any, where: tuple = ()) -> Any:
        if type(tree) is torch.Tensor:
            buffer = self._buffers.get(where)
            if buffer is None or buffer.shape != tree.shape or buffer.dtype != tree.dtype:
                buffer = torch.empty(tree.shape, dtype=tree.dtype, pin_memory=tree.is_cuda)
                self._buffers[where] = buffer
            return buffer.copy_(tree.detach())
        if isinstance(tree, torch.Tensor):  # a tensor subclass: a copy of its own kind
            return staged(tree)
        if isinstance(tree, dict):
            return {key: self.stage(value, (*where, key)) for key, value in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)([self.stage(value, (*where, i)) for i, value in enumerate(tree)])
        return tree


class ShardStaging:
    """Staging for a sharded state (what dcp.save then writes from the writer thread): the shards' CPU
    copies (DTensors included, by torch's own state-dict copy functions) are kept from one save to the next,
    and made again only when the state's layout changed (e.g. the optimizer's state appears after its first
    step). torch's BlockingAsyncStager(cache_staged_state_dict=True) does the same but pins memory always,
    which fails on a machine without a GPU."""

    def __init__(self) -> None:
        self._cache: Any = None
        self._layout: Any = None

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        from torch.distributed._state_dict_utils import _copy_state_dict

        layout = _layout(state_dict)
        if layout != self._layout:
            self._cache = _empty_like(state_dict)
            self._layout = layout
        return _copy_state_dict(state_dict, self._cache)


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
    Why not SCHED_IDLE, which an unprivileged process may undo: measured on 2 ranks of 2 cores (one run
    each, a shared VM) it made a background save cost 1.96x a synchronous one (nice 19: 0.24x); a waking
    thread preempts an idle-policy one at once, also while it holds the GIL the training thread waits for.
    Why not a writer process: it would need its own copy of the staged state (or shared memory) and its
    own process group for the shards' collectives, and the CPU it takes would come out of training just
    the same; the priority is what keeps it out of training's way."""

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

    def submit(self, write: Callable[[], None]) -> None:
        assert self._pending is None, "wait() before submitting the next write"
        self.priority.submitted()
        self._pending = self._pool.submit(self._write, write)

    def _write(self, write: Callable[[], None]) -> None:
        self.priority.lower()  # training goes on: the write takes only what training leaves
        write()

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
        first = next((p for p in problems if p is not None), None)
        if first is not None:
            error = UserError(*first)
            error.agreed = True
            raise error

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
