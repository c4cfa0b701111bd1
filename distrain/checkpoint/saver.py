"""When to save, and writing what the trainer hands over: `Saver` (every N steps, every N epochs, the
last epoch; synchronous or in the background). Collective: every rank calls `save`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from distrain.checkpoint.background import BackgroundSaves, step_owned
from distrain.checkpoint.options import CheckpointConfig
from distrain.checkpoint.store import save_checkpoint
from distrain.launch.dist import DistContext

log = logging.getLogger("distrain")


class Saver:
    """When to save (every N steps, every N epochs, the last epoch), and writing what the trainer hands it.
    `save` is collective (see checkpoint.store.save_checkpoint)."""

    def __init__(
        self,
        cfg: CheckpointConfig,
        run_dir: Path,
        ctx: DistContext,
        *,
        epochs: int,
        steps_per_epoch: int,
        sharded: bool,
        best_higher_is_better: bool = False,
    ):
        self.cfg, self.run_dir, self.ctx = cfg, run_dir, ctx
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.sharded = sharded  # the strategy's checkpoint format: every rank's shards, or one .pt
        self.best_higher_is_better = best_higher_is_better  # of checkpoint.monitor
        self.background = (
            BackgroundSaves(sharded=sharded) if cfg.async_save else None
        )  # checkpoint.async_save: the writes run in a thread of their own

    def should_save_step(self, progress: Any) -> bool:
        every = self.cfg.every_steps
        return bool(every) and not progress.global_step % every and not self._epoch_save_follows(progress)

    def _epoch_save_follows(self, p: Any) -> bool:
        """The step just taken ends an epoch whose own save (after its evaluation) writes this same global
        step with the epoch's metrics: saving it twice would double that save's cost for nothing."""
        every = self.cfg.every_epochs
        return bool(
            every
            and p.step_in_epoch == self.steps_per_epoch
            and ((p.epoch + 1) % every == 0 or p.epoch + 1 == self.epochs)
        )

    def should_save_epoch(self, progress: Any, *, last: bool) -> bool:
        """After an epoch ended (progress.epoch counts it). The last epoch (also an early stop) is always saved
        when epoch saves are on."""
        every = self.cfg.every_epochs
        return bool(every) and (progress.epoch % every == 0 or last)

    def save(
        self,
        payload: dict[str, Any],
        shards: tuple[nn.Module, Any] | None,
        live: tuple[nn.Module, Any] | None = None,
        *,
        position: tuple[int, int] | None = None,
    ) -> Path:
        """Write `payload` (and, sharded, every rank's `shards` of model and optimizer). Collective. `live`:
        the run's model and optimizer; in the background, the copy of their parameters and optimizer state
        is left to the writer thread (the next optimizer step waits for it: checkpoint/background.py).
        `position`: (epoch, its steps trained) of the saved weights, for the log line (Progress.position);
        by default the payload's resume point."""
        ckpt = self.cfg
        path = save_checkpoint(
            self.run_dir,
            payload,
            keep_last=ckpt.keep_last,
            keep_best=ckpt.keep_best,
            monitor=ckpt.monitor,
            higher_is_better=self.best_higher_is_better,
            is_main=self.ctx.is_main,
            shards=shards,
            background=self.background,
            owned=step_owned(*live) if self.background is not None and live is not None else None,
        )
        epoch, step = position or (payload["epoch"], payload["step_in_epoch"])
        # Numbered as the console's epoch lines (from 0); the step within that epoch, out of an epoch's
        # steps: a stop by trainer.max_steps after 5 steps of 301 says "step 5 of 301", not "epoch 1, step 0".
        log.info(
            "%s %s (epoch %d, step %d of %d)",
            "saving in the background" if self.background else "saved",
            path,
            epoch,
            step,
            self.steps_per_epoch,
        )
        return path

    def until_staged(self) -> None:
        """Before anything but an optimizer step may change the weights: the writer's copy of them is made."""
        if self.background is not None:
            self.background.until_staged()

    def close(self, *, agree: bool) -> None:
        """Let a background write finish (see BackgroundSaves.close); nothing to do for synchronous saves."""
        if self.background is not None:
            self.background.close(agree=agree)
