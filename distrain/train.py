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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from distrain import __version__, dist
from distrain.checkpoint import atomic_write_bytes
from distrain.config import Config, dump_config
from distrain.data import DataSets, EvalBatches, build_datasets, build_eval_batches, build_train_batches
from distrain.dist import DistContext, distributed
from distrain.env import DistEnv, detect
from distrain.engines import build_engine
from distrain.errors import ConfigError
from distrain.loops import EpochMetrics, TrainMeter, evaluate, train_one_epoch
from distrain.models import build_model
from distrain.objective import Objective, build_objective
from distrain.optim import build_optimizer
from distrain.report import Reporter
from distrain.schedule import build_scheduler, is_constant
from distrain.seeding import configure_determinism, seed_everything
from distrain.signals import Interrupted, StopSignals
from distrain.slurm import maybe_requeue, resolve_run_dir
from distrain.state import Saver, TrainState, maybe_resume
from distrain.stopping import Stopper

log = logging.getLogger("distrain")


def train(cfg: Config, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Run the whole training; returns the final test metrics. Must run on every rank."""
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
            return _run(cfg, ctx)
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


@dataclass
class Parts:
    """What a config builds on one rank: data, model, objective and this rank's test batches."""

    data: DataSets
    model: nn.Module
    objective: Objective
    test_batches: EvalBatches
    loader_args: dict[str, Any]


def build_parts(cfg: Config, ctx: DistContext) -> Parts:
    configure_determinism(cfg.trainer.deterministic, cfg.trainer.deterministic_algorithms)
    seed_everything(cfg.seed)
    if cfg.data.download:
        # Only global rank 0 downloads; the others wait for the files (several ranks downloading into
        # one folder would race), then read them.
        data = build_datasets(cfg.data, cfg.seed) if ctx.is_main else None
        dist.barrier()
        data = data or build_datasets(cfg.data, cfg.seed, allow_download=False)
    else:
        data = build_datasets(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.num_features, data.num_classes).to(ctx.device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)  # 4-d weights only; others are unchanged
    objective = build_objective(data.num_classes)
    loader_args = dict(rank=ctx.rank, world_size=ctx.world_size, device=ctx.device, seed=cfg.seed,
                       loader=cfg.data.loader, num_workers=cfg.data.num_workers,
                       persistent_workers=cfg.data.persistent_workers, prefetch_factor=cfg.data.prefetch_factor,
                       prepare_targets=objective.prepare_targets, channels_last=cfg.trainer.channels_last)
    test_batches = build_eval_batches(data.test, eval_batch_size=cfg.data.eval_batch_size, **loader_args)
    return Parts(data, model, objective, test_batches, loader_args)


def _run(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    run_dir = prepare_run_dir(cfg, ctx)
    parts = build_parts(cfg, ctx)
    train_batches = build_train_batches(parts.data.train, global_batch_size=cfg.data.global_batch_size,
                                        shuffle=cfg.data.shuffle, **parts.loader_args)
    optimizer = build_optimizer(cfg.optim, parts.model.parameters())
    scheduler = build_scheduler(cfg.schedule, optimizer, base_lr=cfg.optim.lr,
                                steps_per_epoch=train_batches.num_steps, epochs=cfg.trainer.epochs)
    engine = build_engine(cfg, ctx)
    meter = TrainMeter(parts.objective, ctx.device)
    state = TrainState(parts.model, optimizer, scheduler, Stopper(cfg.stop), meter, scaler=engine.scaler,
                       engine=engine.name)
    maybe_resume(cfg, ctx, run_dir, state)  # into the unwrapped model and the raw optimizer
    train_model, train_optimizer = engine.prepare(parts.model, optimizer)
    saver = Saver(cfg, ctx, run_dir, state)
    progress = state.progress
    reporter = Reporter(cfg, ctx, run_dir, parts.model, start_step=progress.global_step,
                        steps_per_epoch=train_batches.num_steps)
    reporter.drop_from_epoch(progress.epoch)
    log.info("distrain %s | %s | %d process(es) | device %s | backend %s | engine %s | %d train / %d test "
             "samples | %d steps per epoch", __version__, ctx.env.source, ctx.world_size, ctx.device,
             ctx.backend or "none", engine.name, len(parts.data.train), len(parts.data.test),
             train_batches.num_steps)
    # A constant learning rate needs no scheduler call per step (see TrainState.to_payload).
    step_scheduler = None if is_constant(cfg.schedule) else scheduler

    test, finished = None, False
    try:
        with StopSignals(["SIGTERM", "SIGINT", cfg.trainer.requeue_signal]) as signals:

            def after_step(step: int) -> None:
                progress.step_in_epoch, progress.global_step = step + 1, progress.global_step + 1
                if reporter.wants_step(progress.global_step):
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
                train_one_epoch(engine, train_model, train_optimizer, train_batches, parts.objective, cfg.optim,
                                world_size=ctx.world_size, meter=meter, accumulate_steps=cfg.trainer.accumulate_steps,
                                scheduler=step_scheduler, after_step=after_step)
                train = EpochMetrics.from_totals(engine.sum_over_ranks(meter.totals().clone()))
                train_time = time.perf_counter() - started
                test = evaluate(parts.model, parts.test_batches, parts.objective, ctx.device, engine.sum_over_ranks)
                reporter.log_epoch(epoch, progress.global_step, train, test, time.perf_counter() - started, lr,
                                   train_time_s=train_time)
                progress.epoch, progress.step_in_epoch = epoch + 1, 0
                meter.reset()
                reason = state.stopper.update(train, test)
                # Identical metrics give identical verdicts, but agree anyway: no rank may ever stop alone.
                if dist.any_true(reason is not None, ctx.device):
                    state.stopper.stopped = reason or "another rank stopped"
                    log.info("stopping after epoch %d: %s", epoch, state.stopper.stopped)
                saver.maybe_save_epoch(test, last=epoch + 1 == cfg.trainer.epochs or bool(state.stopper.stopped))
        finished = True
    finally:
        # Drop DDP (its reducer holds the group's last work objects) before the group is destroyed.
        del train_model, train_optimizer
        engine.release()
        reporter.close(plots=cfg.log.plots and finished)

    if test is None:  # resumed a run that had already finished or stopped: report where it ended
        test = evaluate(parts.model, parts.test_batches, parts.objective, ctx.device)
    return {"test_loss": test.loss, "test_accuracy": test.accuracy, "test_samples": test.samples,
            "global_step": progress.global_step, "epochs_done": progress.epoch,
            "stopped": state.stopper.stopped, "run_dir": str(run_dir)}


def prepare_run_dir(cfg: Config, ctx: DistContext) -> Path:
    """Rank 0 creates run.dir and writes the resolved config; the others wait until it exists."""
    run_dir = Path(cfg.run.dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())  # never a half-written file
    dist.barrier()
    return run_dir
