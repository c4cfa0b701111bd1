"""What is saved, when, and how a run resumes: the training state around the checkpoint files.

`TrainState` holds everything a run needs to continue exactly: model, optimizer, LR scheduler, gradient
scaler, stopper, progress (epoch, step inside the epoch, global step) and the epoch's running train sums.
`Saver` decides when to save (every N steps, every N epochs, the last epoch) and writes; `maybe_resume` loads
the checkpoint that `checkpoint.resume` names. Both are collective: every rank calls them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distrain.checkpoint.background import BackgroundSaves, step_owned
from distrain.checkpoint.files import CheckpointError
from distrain.checkpoint.sharded import load_sharded_into, load_whole_into_sharded
from distrain.checkpoint.store import (
    find_resumable,
    load_model_weights,
    load_payload,
    resolve_checkpoint,
    restore_rng,
    save_checkpoint,
    set_aside,
)
from distrain.config.schema import CheckpointConfig, Config
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.loop.stopping import Stopper
from distrain.reporting.figures import Meter
from distrain.seeding import rank_seed, seed_everything
from distrain.version import __version__

if TYPE_CHECKING:
    from distrain.loop.definition import RunDefinition

log = logging.getLogger("distrain")


@dataclass
class Progress:
    """Where training stands. Independent of the number of ranks (steps are global batches). The trainer
    alone moves it (advance, end_epoch); a resume loads it in place."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # global batches of that epoch already trained
    global_step: int = 0  # optimizer steps since the start of the run
    skipped_steps: int = 0  # of those, steps skipped for non-finite values (trainer.on_nonfinite: skip_step)

    def advance(self, *, step_in_epoch: int, skipped: bool) -> None:
        """One optimizer step taken (or skipped, its batch used up all the same)."""
        self.step_in_epoch, self.global_step = step_in_epoch, self.global_step + 1
        self.skipped_steps += skipped

    def end_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.skipped_steps = state["global_step"], state.get("skipped_steps", 0)


@dataclass
class TrainState:
    model: nn.Module  # unwrapped: checkpoints hold no DDP "module." prefixes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stopper: Stopper
    meter: Meter  # this rank's running [loss sum, hits, samples] of the epoch in progress
    scaler: Any = None  # the engine's gradient scaler when training in fp16
    engine: str = "native"  # recorded in checkpoints; either engine loads the other's (same state dicts)
    strategy: Any = None  # the Strategy: its own state (per rank), and whether it loads into shards
    progress: Progress = field(default_factory=Progress)
    unstepped_schedule: bool = False  # the constant built-in schedule: never stepped in the loop
    # Each group's lr at the start of the epoch in progress (its record's `lr`, also after a mid-epoch resume).
    epoch_lrs: list[float] | None = None
    callbacks: Any = None  # the run's Callbacks: those with state_dict are checkpointed

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
            # Per-rank state means something on the same ranks only; on another world size the strategy
            # gets None and re-derives its state, or refuses the resume by name.
            states = payload.get("strategy") or []
            same = payload["world_size"] == world_size and len(states) == world_size
            self.strategy.load_state_dict(states[rank] if same else None)
        # The saved sums already cover every rank: give them to one rank, zeros to the rest.
        totals = payload["epoch_totals"]
        self.meter.load(totals if is_main else torch.zeros_like(totals))
        self.progress.load_state_dict(payload)  # in place: whoever holds the run's Progress sees it


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

    def should_save_step(self, progress: Progress) -> bool:
        every = self.cfg.every_steps
        return bool(every) and not progress.global_step % every and not self._epoch_save_follows(progress)

    def _epoch_save_follows(self, p: Progress) -> bool:
        """The step just taken ends an epoch whose own save (after its evaluation) writes this same global
        step with the epoch's metrics: saving it twice would double that save's cost for nothing."""
        every = self.cfg.every_epochs
        return bool(
            every
            and p.step_in_epoch == self.steps_per_epoch
            and ((p.epoch + 1) % every == 0 or p.epoch + 1 == self.epochs)
        )

    def should_save_epoch(self, progress: Progress, *, last: bool) -> bool:
        """After an epoch ended (progress.epoch counts it). The last epoch (also an early stop) is always saved
        when epoch saves are on."""
        every = self.cfg.every_epochs
        return bool(every) and (progress.epoch % every == 0 or last)

    def save(
        self, payload: dict[str, Any], shards: tuple[nn.Module, Any] | None, live: tuple[nn.Module, Any] | None = None
    ) -> Path:
        """Write `payload` (and, sharded, every rank's `shards` of model and optimizer). Collective. `live`:
        the run's model and optimizer; in the background, the copy of their parameters and optimizer state
        is left to the writer thread (the next optimizer step waits for it: checkpoint/background.py)."""
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
        log.info(
            "%s %s (epoch %d, step %d of the epoch)",
            "saving in the background" if self.background else "saved",
            path,
            payload["epoch"],
            payload["step_in_epoch"],
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


# Changes that make the saved state meaningless or the continuation silently different: refused on resume.
UNSAFE = (
    "seed",
    "data.name",
    "data.args",
    "data.global_batch_size",
    "data.val_fraction",
    "data.target_key",
    "data.shuffle",
    "data.lanes",  # a sharded stream's global order
    "data.shuffle_window",
    "data.split_by",
    "trainer.steps_per_epoch",  # where epochs end, so what a resumed step of an epoch is
    "model",
    "loss",
    "optim",
    "schedule",
)
_WAYS_OUT = (
    "to start anew: checkpoint.resume=never or a new run.dir; to start a new run from these weights: "
    "checkpoint.resume=PATH checkpoint.load=weights"
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Refuse (exit 2) a resume whose config changes what the saved state means, naming every differing
    key; log the changes that keep the run meaningful (epochs, logging, checkpoint cadence, engine, ...)."""
    old, new = _flat(saved), _flat(current)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    unsafe = [k for k in changed if any(k == p or k.startswith(p + ".") for p in UNSAFE)]
    if unsafe:
        listed = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in unsafe)
        from distrain.errors import ConfigError

        raise ConfigError(unsafe[0], f"differs from the run being resumed ({path}): {listed}", _WAYS_OUT)
    for key in changed:
        if key != "run.dir":
            log.info("resuming with a changed setting: %s: %r -> %r", key, old.get(key), new.get(key))


def maybe_resume(
    cfg: Config, ctx: DistContext, run_dir: Path, state: TrainState, definition: RunDefinition | None = None
) -> None:
    """Load the checkpoint that checkpoint.resume names (auto: the newest complete one of run.dir) into
    `state` and the random generators, after checking that its config and `definition` (what fit was
    given) allow it. Collective: every rank must call it. `never` starts afresh: the run directory's
    checkpoints, if any, are moved aside first (see checkpoint.store.set_aside)."""
    resume = cfg.checkpoint.resume
    if resume == "never":
        set_aside(run_dir, ctx.is_main)
        return
    # Rank 0 chooses (and verifies checksums) once; every rank then loads the same file.
    chosen, problem = None, None
    if ctx.is_main:
        try:
            found = find_resumable(run_dir) if resume == "auto" else resolve_checkpoint(resume)
            chosen = str(found) if found is not None else None
        except CheckpointError as exc:
            problem = (exc.message, exc.hint)
    # Every rank learns rank 0's choice, or its error: a rank that stopped alone would leave the others waiting.
    chosen, problem = dist.broadcast_object((chosen, problem))
    if problem is not None:
        error = CheckpointError(*problem)
        error.agreed = True  # rank 0's verdict, broadcast
        raise error
    if chosen is None:
        return
    # A sharded checkpoint is read shard by shard into the live (sharded or whole) objects; a .pt is
    # loaded whole, then handed out shard by shard if this run's model is sharded.
    from_shards, into_shards = Path(chosen).is_dir(), state.strategy.loads_into_shards
    payload = load_payload(chosen, map_location=ctx.device, model_weights=not from_shards)
    if cfg.checkpoint.load == "weights":
        if from_shards:
            load_sharded_into(Path(chosen), state.model, None)
        elif into_shards:
            load_whole_into_sharded(state.model, None, payload)
        else:
            load_model_weights(state.model, payload, chosen)
        log.info(
            "started a new run from the weights of %s (epoch %d, global step %d); optimizer, schedule and "
            "progress start afresh",
            chosen,
            payload["epoch"],
            payload["global_step"],
        )
        return
    check_resumable(payload.get("config", {}), cfg.to_dict(), chosen)
    if definition is not None:
        definition.check_resumable(payload.get("definition"), chosen)
    try:
        if from_shards:
            load_sharded_into(Path(chosen), state.model, state.optimizer)
        elif into_shards:
            load_whole_into_sharded(state.model, state.optimizer, payload)
        state.load_payload(payload, rank=ctx.rank, world_size=ctx.world_size, weights=not (from_shards or into_shards))
    except (RuntimeError, KeyError, ValueError) as exc:  # a model or optimizer given to fit that differs
        raise CheckpointError(
            f"checkpoint {chosen} does not fit this run's model or optimizer: {str(exc).splitlines()[0]}", _WAYS_OUT
        ) from None
    saved_engine = payload.get("engine", "native")
    if saved_engine != state.engine:
        # Both engines save plain (unwrapped) state dicts of the same objects, so the state maps as is.
        log.info(
            "checkpoint written by engine %s, resuming with engine %s: model, optimizer, scheduler, "
            "scaler and progress map directly",
            saved_engine,
            state.engine,
        )
    if payload["world_size"] == ctx.world_size:
        restore_rng(payload["rng"][ctx.rank])
    else:
        # Per-rank generator streams have no meaning on another number of ranks. The data order does not
        # depend on them (it comes from seed + epoch), so only in-model randomness (dropout) changes.
        seed_everything(rank_seed(cfg.seed, ctx.rank, payload["global_step"]))
        log.warning(
            "resuming a %d-process checkpoint on %d processes: the data order continues exactly; "
            "per-rank random generators were re-derived from seed, step and rank",
            payload["world_size"],
            ctx.world_size,
        )
    p = state.progress
    log.info(
        "resumed from %s: epoch %d, step %d of the epoch, global step %d",
        chosen,
        p.epoch,
        p.step_in_epoch,
        p.global_step,
    )
