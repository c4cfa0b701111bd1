"""What a checkpoint holds: `TrainState`, everything a run needs to continue exactly (model, optimizer, LR
scheduler, gradient scaler, stopper, the strategy's state, callbacks, progress and the epoch's running
train sums), as one payload and back. When to save and how to resume are the checkpoint package's
(distrain.checkpoint.saver, distrain.checkpoint.resume).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distrain.loop.stopping import Stopper
from distrain.reporting.figures import Meter
from distrain.version import __version__

log = logging.getLogger("distrain")


@dataclass
class Progress:
    """Where training stands. Independent of the number of ranks (steps are global batches). The trainer
    alone moves it (advance, end_epoch); a resume loads it in place."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # global batches of that epoch already trained
    global_step: int = 0  # optimizer steps since the start of the run
    skipped_steps: int = 0  # of those, steps skipped for non-finite values (trainer.on_nonfinite: skip_step)
    ended_epoch_steps: int = 0  # steps the epoch ended last took (fewer after trainer.max_steps)

    def position(self) -> tuple[int, int]:
        """(epoch, its steps trained) of the weights as they stand: after an epoch ended, that epoch and its
        steps (which were fewer than an epoch's when trainer.max_steps stopped it), not the next epoch's 0."""
        if self.step_in_epoch == 0 and self.epoch > 0:
            return self.epoch - 1, self.ended_epoch_steps
        return self.epoch, self.step_in_epoch

    def advance(self, *, step_in_epoch: int, skipped: bool) -> None:
        """One optimizer step taken (or skipped, its batch used up all the same)."""
        self.step_in_epoch, self.global_step = step_in_epoch, self.global_step + 1
        self.skipped_steps += skipped

    def end_epoch(self) -> None:
        self.ended_epoch_steps = self.step_in_epoch
        self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "ended_epoch_steps": self.ended_epoch_steps,  # for the label of a save right after a resume
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.skipped_steps = state["global_step"], state.get("skipped_steps", 0)
        self.ended_epoch_steps = state.get("ended_epoch_steps", 0)


@dataclass
class TrainState:
    model: nn.Module  # unwrapped: checkpoints hold no DDP "module." prefixes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stopper: Stopper
    meter: Meter  # this rank's running [loss sum, hits, samples] of the epoch in progress
    strategy: Any = None  # the Strategy: its own state (per rank), its scaler, whether it loads into shards
    progress: Progress = field(default_factory=Progress)
    unstepped_schedule: bool = False  # the constant built-in schedule: never stepped in the loop
    # Each group's lr at the start of the epoch in progress (its record's `lr`, also after a mid-epoch resume).
    epoch_lrs: list[float] | None = None
    callbacks: Any = None  # the run's Callbacks: those with state_dict are checkpointed
    step_state: Any = None  # a stateful step (loop/user_step.py's StepObjective): its state per rank

    @property
    def scaler(self) -> Any:
        """The strategy's gradient scaler when training in fp16, else None."""
        return getattr(self.strategy, "scaler", None)

    @property
    def engine(self) -> str:
        """Recorded in checkpoints; either engine loads the other's (the same state dicts)."""
        return getattr(self.strategy, "engine", "native")

    def to_payload(
        self,
        config: dict[str, Any],
        world_size: int,
        metrics: dict[str, float],
        epoch_totals: torch.Tensor,
        *,
        weights: bool = True,
        definition: dict[str, Any] | None = None,
        strategy_states: list[dict[str, Any]] | None = None,
        step_states: list[Any] | None = None,
    ) -> dict[str, Any]:
        """The checkpoint contents (no collective: `epoch_totals` are the epoch's train sums, already summed
        over the ranks by the caller). `weights=False`: without the model and optimizer (a sharded
        checkpoint writes those from every rank)."""
        # The built-in constant schedule is not stepped in the loop (it would cost a Python call per step),
        # so its counter is brought up to date here; any other scheduler counts its own steps.
        if self.unstepped_schedule:
            self.scheduler.last_epoch = self.progress.global_step
        payload = {
            "format": 1,
            "engine": self.engine,
            "distrain_version": __version__,
            "torch_version": str(torch.__version__),
            **self.progress.state_dict(),
            "world_size": world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "stopper": self.stopper.state_dict(),
            "epoch_lrs": self.epoch_lrs,
            "callbacks": self.callbacks.state_dict() if self.callbacks else {},
            "strategy": strategy_states or [],  # each rank's Strategy.state_dict(), by rank
            "step": step_states or [],  # each rank's stateful step's state_dict(), by rank
            # The epoch's train sums over all ranks, so a mid-epoch resume still reports the whole epoch.
            "epoch_totals": epoch_totals.cpu(),
            "config": config,
            "definition": definition,  # what fit was given (loop/definition.py), compared on resume
            "metrics": metrics,
        }
        if not weights:
            del payload["model"], payload["optimizer"]
        return payload

    def load_payload(self, payload: dict[str, Any], *, rank: int, world_size: int, weights: bool = True) -> None:
        """Everything into the live objects; `weights=False`: all but model and optimizer (loaded already)."""
        is_main = rank == 0
        if weights:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.stopper.load_state_dict(payload["stopper"])
        self.epoch_lrs = payload.get("epoch_lrs")
        if self.callbacks:
            self.callbacks.load_state_dict(payload.get("callbacks"))
        if self.strategy is not None:
            # Per-rank state means something on the same ranks only: on another world size the strategy
            # gets None (it re-derives its state, or refuses the resume by name); {} when the checkpoint
            # holds none (an older checkpoint, or a strategy that keeps none).
            states = payload.get("strategy") or []
            if not any(states):
                self.strategy.load_state_dict({})
            elif payload["world_size"] == world_size and len(states) == world_size:
                self.strategy.load_state_dict(states[rank])
            else:
                self.strategy.load_state_dict(None)
        if self.step_state is not None:
            self.step_state.load_state_dict(payload.get("step") or [], payload["world_size"], rank, world_size)
        # The saved sums already cover every rank: give them to one rank, zeros to the rest.
        totals = payload["epoch_totals"]
        self.meter.load(totals if is_main else torch.zeros_like(totals))
        self.progress.load_state_dict(payload)  # in place: whoever holds the run's Progress sees it
