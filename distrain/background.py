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
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Callable

import torch
import torch.distributed as tdist

from distrain import dist
from distrain.errors import UserError

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


class BackgroundSaves:
    def __init__(self, *, sharded: bool):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="distrain-save")
        self._pending: concurrent.futures.Future | None = None
        # A sharded write runs collectives (DCP's planning, the shards' checksums) from the writer threads.
        # On the default group they would interleave with training's all-reduces, which gloo detects as
        # a size mismatch and aborts on: they get a group of their own, created here by every rank alike.
        self.group = tdist.new_group(backend="gloo") if sharded and tdist.is_initialized() else None

    def submit(self, write: Callable[[], None]) -> None:
        assert self._pending is None, "wait() before submitting the next write"
        self._pending = self._pool.submit(write)

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
