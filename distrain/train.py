"""Train a model from a config: the same code in one process, under torchrun and under srun.

    distrain train configs/xor.yaml                                              # one CPU process
    torchrun --standalone --nproc_per_node=2 -m distrain train configs/xor.yaml  # 2 processes, one node
    torchrun --nnodes=2 --node_rank=R --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --nproc_per_node=4 -m distrain train configs/xor.yaml                    # across nodes
    srun --ntasks=4 distrain train configs/xor.yaml                              # inside a SLURM allocation
    distrain train configs/xor.yaml optim.lr=0.05 trainer.epochs=10              # dotted overrides

The run loop, in order: resume, then for each epoch: train (saving every N steps and stopping on a
signal), evaluate, log, checkpoint.
"""

from __future__ import annotations

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
from distrain.checkpoint import (CheckpointError, find_resumable, load_payload, restore_rng,
                                 save_checkpoint)
from distrain.config import Config, dump_config
from distrain.data import DataSets, EvalBatches, build_datasets, build_eval_batches, build_train_batches
from distrain.dist import DistContext, distributed
from distrain.env import DistEnv, detect
from distrain.errors import ConfigError
from distrain.loops import EpochMetrics, evaluate, new_totals, reduce_totals, train_one_epoch
from distrain.metrics import MetricsLog
from distrain.models import build_model
from distrain.objective import Objective, build_objective
from distrain.optim import build_optimizer
from distrain.parallel import wrap_model
from distrain.seeding import configure_determinism, seed_everything
from distrain.signals import Interrupted, StopSignals

log = logging.getLogger("distrain")


@dataclass
class Progress:
    """Where training stands. Independent of the number of ranks (steps are global batches)."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # global batches of that epoch already trained
    global_step: int = 0  # optimizer steps since the start of the run


def train(cfg: Config, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Run the whole training; returns the final test metrics. Must run on every rank."""
    env = detect(environ)
    check_against_env(cfg, env)
    setup_logging(env.rank)
    with distributed(env, backend=cfg.dist.backend, timeout_s=cfg.dist.timeout_s,
                     device=cfg.trainer.device) as ctx:
        return _run(cfg, ctx)


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
    data = build_datasets(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.num_features, data.num_classes).to(ctx.device)
    loader_args = dict(rank=ctx.rank, world_size=ctx.world_size, device=ctx.device, seed=cfg.seed,
                       loader=cfg.data.loader, num_workers=cfg.data.num_workers)
    test_batches = build_eval_batches(data.test, eval_batch_size=cfg.data.eval_batch_size, **loader_args)
    return Parts(data, model, build_objective(data.num_classes), test_batches, loader_args)


def _run(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    run_dir = prepare_run_dir(cfg, ctx)
    parts = build_parts(cfg, ctx)
    data, model, objective, test_batches = parts.data, parts.model, parts.objective, parts.test_batches
    optimizer = build_optimizer(cfg.optim, model.parameters())
    train_batches = build_train_batches(data.train, global_batch_size=cfg.data.global_batch_size,
                                        shuffle=cfg.data.shuffle, **parts.loader_args)
    totals = new_totals(ctx.device)
    progress = maybe_resume(cfg, ctx, run_dir, model, optimizer, totals)
    ddp_model = wrap_model(model, ctx)
    metrics = MetricsLog(run_dir, is_main=ctx.is_main)
    metrics.drop_from_epoch(progress.epoch)
    saver = Saver(cfg, ctx, run_dir, model, optimizer)
    log.info("distrain %s | %s | rank 0 of %d | device %s | backend %s | %d train / %d test samples | "
             "%d steps per epoch", __version__, ctx.env.source, ctx.world_size, ctx.device, ctx.backend or "none",
             len(data.train), len(data.test), train_batches.num_steps)

    test = None
    with StopSignals(["SIGTERM", "SIGINT", cfg.trainer.requeue_signal]) as stop:
        for epoch in range(progress.epoch, cfg.trainer.epochs):
            started = time.perf_counter()
            train_batches.set_epoch(epoch)
            train_batches.set_start_step(progress.step_in_epoch)

            def after_step(step: int) -> None:
                progress.step_in_epoch, progress.global_step = step + 1, progress.global_step + 1
                saved = saver.maybe_save_step(progress, totals)
                signum = stop.agreed_signal(ctx.device)
                if signum is not None:
                    if not saved:
                        saver.save(progress, totals)
                    raise Interrupted(signum)

            train_one_epoch(ddp_model, optimizer, train_batches, objective, cfg.optim,
                            world_size=ctx.world_size, totals=totals, after_step=after_step)
            test = evaluate(model, test_batches, objective, ctx.device)
            train = reduce_totals(totals)
            metrics.log_epoch(epoch, progress.global_step, train, test, time.perf_counter() - started)
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            totals.zero_()
            saver.maybe_save_epoch(progress, totals, test, last=epoch + 1 == cfg.trainer.epochs)
    if test is None:  # resumed from a checkpoint of a finished run
        test = evaluate(model, test_batches, objective, ctx.device)
    return {"test_loss": test.loss, "test_accuracy": test.accuracy, "test_samples": test.samples,
            "global_step": progress.global_step, "run_dir": str(run_dir)}


def prepare_run_dir(cfg: Config, ctx: DistContext) -> Path:
    """Rank 0 creates run.dir and writes the resolved config; the others wait until it exists."""
    run_dir = Path(cfg.run.dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    dist.barrier()
    return run_dir


class Saver:
    """When to save, and what: the full training state. `save` is collective (see checkpoint.save_checkpoint)."""

    def __init__(self, cfg: Config, ctx: DistContext, run_dir: Path, model: nn.Module,
                 optimizer: torch.optim.Optimizer):
        self.cfg, self.ctx, self.run_dir = cfg, ctx, run_dir
        self.model, self.optimizer = model, optimizer

    def maybe_save_step(self, progress: Progress, totals: torch.Tensor) -> bool:
        every = self.cfg.checkpoint.every_steps
        if every and progress.global_step % every == 0:
            self.save(progress, totals)
            return True
        return False

    def maybe_save_epoch(self, progress: Progress, totals: torch.Tensor, test: EpochMetrics, *, last: bool) -> None:
        every = self.cfg.checkpoint.every_epochs
        # The last epoch is always saved (when epoch saves are on), so a finished run can be evaluated.
        if every and (progress.epoch % every == 0 or last):
            self.save(progress, totals, {"test_loss": test.loss, "test_accuracy": test.accuracy})

    def save(self, progress: Progress, totals: torch.Tensor, metrics: dict[str, float] | None = None) -> Path:
        payload = {
            "format": 1,
            "distrain_version": __version__,
            "torch_version": str(torch.__version__),
            "epoch": progress.epoch,
            "step_in_epoch": progress.step_in_epoch,
            "global_step": progress.global_step,
            "world_size": self.ctx.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None,
            "scaler": None,
            # The epoch's running train sums over all ranks, so a mid-epoch resume reports the whole epoch.
            "epoch_totals": dist.all_reduce_sum(totals.clone()).cpu(),
            "config": self.cfg.to_dict(),
            "metrics": metrics or {},
        }
        path = save_checkpoint(self.run_dir, payload, keep_last=self.cfg.checkpoint.keep_last,
                               is_main=self.ctx.is_main)
        log.info("saved %s (epoch %d, step %d of the epoch)", path, progress.epoch, progress.step_in_epoch)
        return path


def maybe_resume(cfg: Config, ctx: DistContext, run_dir: Path, model: nn.Module,
                 optimizer: torch.optim.Optimizer, totals: torch.Tensor) -> Progress:
    """Load the checkpoint that checkpoint.resume names (auto: the newest complete one) into the model,
    optimizer, RNGs and running sums. Collective: every rank must call it."""
    resume = cfg.checkpoint.resume
    if resume == "never":
        return Progress()
    # Rank 0 chooses (and verifies checksums) once; every rank then loads the same file.
    chosen = None
    if ctx.is_main:
        chosen = str(find_resumable(run_dir)) if resume == "auto" else resume
        chosen = None if chosen == "None" else chosen
    chosen = dist.broadcast_object(chosen)
    if chosen is None:
        return Progress()
    payload = load_payload(chosen, map_location=ctx.device)
    saved_batch = payload["config"]["data"]["global_batch_size"]
    if saved_batch != cfg.data.global_batch_size:
        raise CheckpointError(f"checkpoint {chosen} was trained with data.global_batch_size={saved_batch}, "
                              f"this run has {cfg.data.global_batch_size}",
                              "resume with the same global batch size, or start anew with checkpoint.resume=never")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if payload["world_size"] == ctx.world_size:
        restore_rng(payload["rng"][ctx.rank])
    else:
        # Per-rank generator streams have no meaning on another number of ranks. Data order does not
        # depend on them (it comes from seed + epoch), so only in-model randomness (dropout) changes.
        seed_everything(cfg.seed + 1_000_003 * payload["global_step"] + ctx.rank)
        log.warning("resuming a %d-process checkpoint on %d processes: the data order continues exactly; "
                    "per-rank random generators were re-derived from seed, step and rank",
                    payload["world_size"], ctx.world_size)
    if ctx.is_main:
        totals.copy_(payload["epoch_totals"].to(totals.device))
    progress = Progress(payload["epoch"], payload["step_in_epoch"], payload["global_step"])
    log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d", chosen,
             progress.epoch, progress.step_in_epoch, progress.global_step)
    return progress
