"""How a run resumes: `maybe_resume` loads the checkpoint that checkpoint.resume names into a run's state
(duck-typed: loop/state.py's TrainState), after `check_resumable` has compared its config with this
run's. Collective: every rank calls it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from distrain.checkpoint.files import CheckpointError
from distrain.checkpoint.sharded import load_sharded_into, load_whole_into_sharded
from distrain.checkpoint.store import (
    find_resumable,
    load_model_weights,
    load_payload,
    resolve_checkpoint,
    restore_rng,
    set_aside,
)
from distrain.config.schema import Config
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.seeding import rank_seed, seed_everything

log = logging.getLogger("distrain")


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


def maybe_resume(cfg: Config, ctx: DistContext, run_dir: Path, state: Any, definition: Any = None) -> None:
    """Load the checkpoint that checkpoint.resume names (auto: the newest complete one of run.dir) into
    `state` and the random generators, after checking that its config and `definition` (what fit was
    given) allow it. Collective: every rank must call it. `never` starts afresh: the run directory's
    checkpoints, if any, are moved aside first (see checkpoint.store.set_aside)."""
    resume = cfg.checkpoint.resume
    if resume == "never":
        set_aside(run_dir, ctx.is_main)
        return
    # Rank 0 chooses (and verifies checksums) once; every rank then loads the same file, or raises its error.

    def choose() -> str | None:
        found = find_resumable(run_dir) if resume == "auto" else resolve_checkpoint(resume)
        return str(found) if found is not None else None

    chosen = dist.rank0_decides(choose, ctx.is_main, CheckpointError)
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
