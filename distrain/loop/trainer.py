"""Train a model from a config: the same code in one process, under torchrun and under srun.

    distrain train configs/xor.yaml                                              # one CPU process
    torchrun --standalone --nproc_per_node=2 -m distrain train configs/xor.yaml  # 2 processes, one node
    torchrun --nnodes=2 --node_rank=R --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --nproc_per_node=4 -m distrain train configs/xor.yaml                    # across nodes
    srun --ntasks=4 distrain train configs/xor.yaml                              # inside a SLURM allocation
    distrain train configs/xor.yaml optim.lr=0.05 trainer.epochs=10              # dotted overrides

The run loop, in order: resume, then for each epoch: train (saving every N steps and stopping on a
signal), evaluate, log, decide whether to stop early, checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from distrain.version import __version__
from distrain.atomic import atomic_write_bytes
from distrain.checkpoint.ownership import own_run_dir
from distrain.config.parse import dump_config
from distrain.config.schema import Config, OptimConfig
from distrain.data import build_train_batches
from distrain.errors import ConfigError
from distrain.launch import dist
from distrain.launch.dist import DistContext, distributed
from distrain.launch.env import DistEnv, detect
from distrain.launch.signals import Interrupted, StopSignals
from distrain.launch.slurm import maybe_requeue, resolve_run_dir
from distrain.loop.components import Given, Parts, build_optimizer_for, build_parts, log_parts, monitor_direction
from distrain.loop.nonfinite import NonFiniteGuard
from distrain.loop.schedule import build_scheduler, is_constant
from distrain.loop.state import Saver, TrainState, maybe_resume
from distrain.loop.steps import EpochMetrics, TrainMeter, evaluate, train_one_epoch
from distrain.loop.stopping import Stopper
from distrain.reporting.report import Reporter
from distrain.strategies import build_engine
from distrain.strategies.fsdp import shard_model

log = logging.getLogger("distrain")


def train(cfg: Config, environ: Mapping[str, str] = os.environ, given: Given | None = None) -> dict[str, Any]:
    """Run the whole training; returns the final metrics (test_loss, test_<metric>, val_..., train_...).
    `given`: the user's objects from distrain.fit. Must run on every rank."""
    env = detect(environ)
    check_against_env(cfg, env)
    setup_logging(env.rank)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=resolve_run_dir(cfg.run.dir, environ)))
    if "SLURM_RESTART_COUNT" in environ:
        log.info("SLURM job %s, restart %s: resuming from the newest checkpoint",
                 environ.get("SLURM_JOB_ID"), environ["SLURM_RESTART_COUNT"])
    try:
        with distributed(env, backend=cfg.dist.backend, timeout_s=cfg.dist.timeout_s,
                         device=cfg.trainer.device) as ctx:
            return _run(cfg, ctx, given or Given())
    except Interrupted as exc:
        # After the group is gone: every rank has saved and stopped, so requeueing cannot cut a save short.
        if env.is_main:
            exc.exit_code = maybe_requeue(exc.signum, cfg.trainer.requeue_signal, environ)
        raise


def check_against_env(cfg: Config, env: DistEnv) -> None:
    """Config checks that need the world size; raised before any process group or data exists."""
    if cfg.data.global_batch_size % env.world_size:
        raise ConfigError("data.global_batch_size",
                          f"{cfg.data.global_batch_size} does not divide evenly over {env.world_size} processes",
                          f"use a multiple of {env.world_size}, so every rank gets the same per-rank batch")


def setup_logging(rank: int) -> None:
    # Rank 0 tells the story; the others speak only for warnings and errors, prefixed with their rank.
    handler = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    root = logging.getLogger("distrain")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False


def _run(cfg: Config, ctx: DistContext, given: Given) -> dict[str, Any]:
    parts = build_parts(cfg, ctx, given)  # first: a bad model, loss or data leaves no run directory behind
    if cfg.strategy == "fsdp":
        # Before the optimizer: sharding replaces the parameters (by DTensors) that the optimizer will hold.
        shard_model(parts.model, ctx, cfg.fsdp)
    with own_run_dir(Path(cfg.run.dir), ctx.is_main):  # one run at a time per directory
        return _train_in(cfg, ctx, given, parts, Path(cfg.run.dir))


def _train_in(cfg: Config, ctx: DistContext, given: Given, parts: Parts, run_dir: Path) -> dict[str, Any]:
    train_batches = build_train_batches(parts.data.train, global_batch_size=cfg.data.global_batch_size,
                                        shuffle=cfg.data.shuffle, **parts.loader_args)
    optimizer, base_lr = build_optimizer_for(cfg, parts.model, given)
    scheduler = build_scheduler(cfg.schedule, optimizer, base_lr=base_lr,
                                steps_per_epoch=train_batches.num_steps, epochs=cfg.trainer.epochs)
    engine = build_engine(cfg, ctx)
    meter = TrainMeter(parts.objective, ctx.device)
    stop_upwards = monitor_direction(cfg.stop.mode, cfg.stop.monitor, parts, "stop.monitor", meter.names) \
        if cfg.stop.patience else False
    best_upwards = monitor_direction(cfg.checkpoint.mode, cfg.checkpoint.monitor, parts, "checkpoint.monitor",
                                     meter.names) if cfg.checkpoint.keep_best else False
    state = TrainState(parts.model, optimizer, scheduler, Stopper(cfg.stop, stop_upwards), meter,
                       scaler=engine.scaler, engine=engine.name)
    maybe_resume(cfg, ctx, run_dir, state)  # into the unwrapped model and the raw optimizer
    # Only now: a resume refused for a changed config leaves the run's config.yaml as it was.
    write_config(cfg, ctx, run_dir)
    if state.progress.epoch >= cfg.trainer.epochs or state.stopper.stopped:
        log.info("this run already finished (epoch %d of %d%s): nothing to train; its final metrics follow. "
                 "To train again, use a new run.dir or checkpoint.resume=never", state.progress.epoch,
                 cfg.trainer.epochs, f", {state.stopper.stopped}" if state.stopper.stopped else "")
    train_model, train_optimizer = engine.prepare(parts.model, optimizer)
    progress = state.progress
    guard = NonFiniteGuard(cfg.trainer.on_nonfinite, parts.model, ctx.device, progress,
                           steps_per_epoch=train_batches.num_steps, scaler=engine.scaler,
                           last_good=lambda: _newest_good(run_dir, ctx))
    saver = Saver(cfg, ctx, run_dir, state, best_higher_is_better=best_upwards, guard=guard,
                  steps_per_epoch=train_batches.num_steps)
    reporter = Reporter(cfg, ctx, run_dir, parts.model, start_step=progress.global_step,
                        steps_per_epoch=train_batches.num_steps, directions=parts.metric_objects)
    reporter.drop_from_epoch(progress.epoch)
    log_parts(parts, ctx, train_batches.num_steps, engine.name, __version__, cfg.strategy)
    # A constant learning rate needs no scheduler call per step (see TrainState.to_payload).
    step_scheduler = None if is_constant(cfg.schedule) else scheduler
    optim_cfg = cfg.optim or OptimConfig(lr=base_lr)

    splits: dict[str, EpochMetrics] = {}
    finished = False
    try:
        with StopSignals(["SIGTERM", "SIGINT", cfg.trainer.requeue_signal]) as signals:

            def after_step(step: int) -> None:
                progress.step_in_epoch, progress.global_step = step + 1, progress.global_step + 1
                if reporter.wants_step(progress.global_step):
                    guard.check(weights=False)  # a diverged run stops before it logs losses of 1e30
                    reporter.after_step(progress.global_step, meter, optimizer.param_groups[0]["lr"])
                saved = saver.maybe_save_step()
                signum = signals.agreed_signal()
                if signum is not None:
                    if not saved:
                        saver.save()
                    raise Interrupted(signum)

            for epoch in range(progress.epoch, cfg.trainer.epochs):
                if state.stopper.stopped:
                    break
                started = time.perf_counter()
                train_batches.set_epoch(epoch)
                train_batches.set_start_step(progress.step_in_epoch)
                lr = optimizer.param_groups[0]["lr"]
                reporter.start_epoch(meter, progress.global_step)
                train_one_epoch(engine, train_model, train_optimizer, train_batches, parts.objective, optim_cfg,
                                world_size=ctx.world_size, meter=meter, guard=guard,
                                accumulate_steps=cfg.trainer.accumulate_steps, scheduler=step_scheduler,
                                after_step=after_step)
                guard.check()  # before the epoch's figures and its checkpoint
                totals = engine.sum_over_ranks(meter.totals().clone())
                splits = {"train": EpochMetrics.from_totals(totals, meter.names)}
                train_time = time.perf_counter() - started
                splits.update(evaluate_splits(parts, ctx, engine.sum_over_ranks))
                skipped = progress.skipped_steps if cfg.trainer.on_nonfinite == "skip_step" else None
                reporter.log_epoch(epoch, progress.global_step, splits, time.perf_counter() - started, lr,
                                   train_time_s=train_time, skipped_steps=skipped)
                progress.epoch, progress.step_in_epoch = epoch + 1, 0
                meter.reset()
                reason = state.stopper.update(splits)
                # Identical metrics give identical verdicts, but agree anyway: no rank may ever stop alone.
                if dist.any_true(reason is not None, ctx.device):
                    state.stopper.stopped = reason or "another rank stopped"
                    log.info("stopping after epoch %d: %s", epoch, state.stopper.stopped)
                saver.maybe_save_epoch(splits, last=epoch + 1 == cfg.trainer.epochs or bool(state.stopper.stopped))
        finished = True
    finally:
        # A background checkpoint write completes before the run ends, also when it ends by a signal
        # (the requeued job resumes from it); on a normal end every rank learns whether it succeeded.
        try:
            saver.close(agree=finished)
        finally:
            # Drop DDP (its reducer holds the group's last work objects) before the group is destroyed.
            del train_model, train_optimizer
            engine.release()
            reporter.close(plots=cfg.log.plots and finished)

    if not splits:  # resumed a run that had already finished or stopped: report where it ended
        splits = evaluate_splits(parts, ctx)
    result: dict[str, Any] = {f"{split}_{name}": value for split, m in splits.items()
                              for name, value in m.values.items()}
    result.update({f"{split}_samples": m.samples for split, m in splits.items()})
    result.update(global_step=progress.global_step, epochs_done=progress.epoch, stopped=state.stopper.stopped,
                  skipped_steps=progress.skipped_steps, run_dir=str(run_dir))
    return result


def evaluate_splits(parts: Parts, ctx: DistContext, sum_over_ranks=None) -> dict[str, EpochMetrics]:
    """Metrics of the val and test splits (those that exist). Collective."""
    return {split: evaluate(parts.model, batches, metrics, ctx.device, sum_over_ranks)
            for split, (batches, metrics) in parts.evals.items()}


def _newest_good(run_dir: Path, ctx: DistContext) -> str | None:
    """The checkpoint a resume would pick (for the message when training diverges; rank 0 looks)."""
    from distrain.checkpoint.store import find_resumable

    return str(find_resumable(run_dir)) if ctx.is_main else None


def write_config(cfg: Config, ctx: DistContext, run_dir: Path) -> None:
    """Rank 0 writes the resolved config into run.dir (created by own_run_dir); the others wait for it."""
    if ctx.is_main:
        atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())  # never a half-written file
    dist.barrier()
