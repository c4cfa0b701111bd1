"""Train a model from a config: the same code in one process, under torchrun and under srun.

    distrain train configs/xor.yaml                                              # one CPU process
    torchrun --standalone --nproc_per_node=2 -m distrain train configs/xor.yaml  # 2 processes, one node
    torchrun --nnodes=2 --node_rank=R --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --nproc_per_node=4 -m distrain train configs/xor.yaml                    # across nodes
    srun --ntasks=4 distrain train configs/xor.yaml                              # inside a SLURM allocation
    distrain train configs/xor.yaml optim.lr=0.05 trainer.epochs=10              # dotted overrides

`train` joins the process group and builds the run (`Trainer`: the state a checkpoint holds, the resume
loaded into it, then the step and the reporter); `Trainer.fit` is the story:

    for each epoch:
        for each step: train_step, advance, log, save, check signals
        evaluate, log, stop?, save

Every rank runs all of it. The collectives happen where this file says so (sums of the train metrics,
the stop verdict, the signal check, saves), never inside a serialiser or a logger.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from distrain.atomic import atomic_write_bytes
from distrain.callbacks.base import Callbacks, Run, build_callbacks
from distrain.checkpoint.ownership import STOPPING_WAIT_S, own_run_dir
from distrain.checkpoint.resume import maybe_resume
from distrain.checkpoint.saver import Saver
from distrain.config.parse import dump_config
from distrain.config.schema import Config, default_run_dir
from distrain.data import build_train_batches
from distrain.data.structures import tree_map
from distrain.errors import ArgumentError, ConfigError, Hung, LostPeer
from distrain.launch import dist, stragglers
from distrain.launch.dist import DistContext
from distrain.launch.env import DistEnv, detect
from distrain.launch.signals import Interrupted, StopSignals
from distrain.launch.slurm import maybe_requeue, resolve_run_dir
from distrain.launch.watchdog import (
    Watchdog,
    aborted_peer,
    progress,
    resolve_hang_timeout,
    wait_for_the_watchdog,
)
from distrain.loop.components import (
    Given,
    Parts,
    build_optimizer_for,
    build_parts,
    joined,
    log_parts,
    monitor_direction,
)
from distrain.loop.definition import RunDefinition
from distrain.loop.meters import build_meter
from distrain.loop.nonfinite import NonFiniteGuard
from distrain.loop.result import FitResult
from distrain.loop.schedule import build_schedule
from distrain.loop.several import SelfSteppingStep
from distrain.loop.state import TrainState
from distrain.loop.steps import StrategyStep, TrainStep, evaluate_splits, needs_closure
from distrain.loop.stopping import StopKind, Stopper, StopReason
from distrain.loop.user_step import keeps_state
from distrain.reporting.figures import EpochMetrics, scalar_figures
from distrain.reporting.report import Reporter
from distrain.seeding import rank_seed, seed_everything
from distrain.strategies import build_strategy
from distrain.strategies.base import ModelSet, Strategy
from distrain.version import __version__

log = logging.getLogger("distrain")


def train(cfg: Config, given: Given | None = None, environ: Mapping[str, str] = os.environ) -> FitResult:
    """Run the whole training; returns its FitResult on every rank. `given`: the user's objects from
    distrain.fit. Must run on every rank."""
    env = detect(environ)
    check_against_env(cfg, env)
    in_group = False
    # The stop signals are caught from the loop's start to the end of the teardown (see StopSignals): when
    # torchrun's agent sends SIGTERM to the survivors of a lost worker, each still ends with its message.
    with StopSignals(["SIGTERM", "SIGINT", cfg.trainer.requeue_signal]) as signals:
        try:
            with joined(cfg, env) as ctx:
                in_group = True
                cfg = with_run_dir(cfg, environ, ctx.env)
                given = given or Given()
                parts = build_parts(cfg, ctx, given)  # first: a bad model, loss or data leaves no run directory
                lanes = parts.stream.lanes if parts.stream is not None and parts.stream.shards else None
                strategy = build_strategy(cfg, ctx, lanes)
                # Before the optimizer: fsdp replaces the parameters (by DTensors) that the optimizer will hold;
                # a strategy refuses here what it cannot train (before anything is written).
                strategy.setup(parts.model)
                # The model is built, the same on every rank: from here each rank draws its own random stream.
                seed_everything(rank_seed(cfg.seed, ctx.rank))
                with (
                    # One run at a time per directory; a holder on its way out is waited for, but not past
                    # the process group's timeout (the other ranks wait for rank 0's verdict in a collective).
                    own_run_dir(
                        Path(cfg.run.dir), ctx.is_main, min(STOPPING_WAIT_S, 0.8 * cfg.dist.timeout_s)
                    ) as owner,
                    Watchdog(
                        env,
                        hang_timeout=resolve_hang_timeout(cfg.trainer.hang_timeout, cfg.dist.timeout_s),
                        resume_hint=functools.partial(resume_hint, Path(cfg.run.dir)),
                        on_orphan=owner.stopping,
                        stacks=Path(cfg.run.dir) / ".stacks",
                    ) as watchdog,
                ):
                    try:
                        trainer = Trainer(cfg, ctx, parts, strategy, given, signals, watchdog)
                    except BaseException:
                        strategy.release()  # e.g. a refused resume: the wrapper goes before the group does
                        raise
                    return trainer.fit()
        except Interrupted as exc:
            # After the group is gone: every rank has saved and stopped, so requeueing cannot cut a save short.
            if env.is_main:
                exc.exit_code = maybe_requeue(exc.signum, cfg.trainer.requeue_signal, environ)
            raise
        except Exception as exc:
            wait_for_the_watchdog()  # a hang being reported: a peer's exit is no news
            # A peer lost mid-run is no bug: after the teardown (the last background write has finished),
            # one line on each survivor instead of gloo's traceback. Failures to join the group keep theirs.
            lost = dist.peer_gone(exc, rank=env.rank, world_size=env.world_size) if in_group else None
            if lost is None:
                raise
            stacks = Path(cfg.run.dir) / ".stacks"
            mismatch = aborted_peer(stacks, env.rank, env.world_size, exc)
            if mismatch is not None:  # the peer died of a collective mismatch: the two collectives named
                raise Hung(mismatch, resume_hint(Path(cfg.run.dir))) from None
            raise LostPeer(lost_peer_message(lost, Path(cfg.run.dir))) from None


def with_run_dir(cfg: Config, environ: Mapping[str, str], env: DistEnv | None = None) -> Config:
    """The config with run.dir resolved: under Ray Train, unset or relative, in Ray's experiment directory;
    elsewhere unset, the default for the script; SLURM's job id filled in."""
    run_dir = cfg.run.dir
    if env is not None and env.source == "ray" and (run_dir is None or not os.path.isabs(run_dir)):
        # Ray runs the workers in a temporary folder of their own node: a relative run.dir is placed in
        # Ray's experiment directory instead, where a restarted worker group finds its checkpoints.
        from distrain.launch.ray_train import storage_run_dir

        run_dir = storage_run_dir() if run_dir is None else os.path.join(storage_run_dir(), run_dir)
        log.info("under Ray Train, in its experiment directory: this run's directory is %s", run_dir)
    if run_dir is None:
        import sys

        run_dir = default_run_dir(sys.argv[0])
        log.info("run.dir is not set: this run's directory is %s", run_dir)
    if "SLURM_RESTART_COUNT" in environ:
        log.info(
            "SLURM job %s, restart %s: resuming from the newest checkpoint",
            environ.get("SLURM_JOB_ID"),
            environ["SLURM_RESTART_COUNT"],
        )
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=resolve_run_dir(run_dir, environ)))


def lost_peer_message(lost: str, run_dir: Path) -> str:
    """What a survivor says: whom it lost, and the checkpoint a restart resumes from (the newest with a
    manifest: complete; not hashed again here, the resume verifies it)."""
    newest = _newest_complete(run_dir)
    if newest is None:
        return f"lost {lost}; no checkpoint was complete yet: {_RESTART} starts the run from the beginning"
    return f"lost {lost}; nothing is lost: {_RESTART} resumes from the newest complete checkpoint, {newest}"


_RESTART = "torchrun --max-restarts, a SLURM requeue or the same command again"


def _newest_complete(run_dir: Path) -> Path | None:
    from distrain.checkpoint.files import Manifest
    from distrain.checkpoint.store import checkpoint_dir, list_checkpoints

    return next((p for p in list_checkpoints(checkpoint_dir(run_dir)) if Manifest.read(p) is not None), None)


def resume_hint(run_dir: Path) -> str:
    """What a job stopped as hung can do next (the watchdog's hint)."""
    newest = _newest_complete(run_dir)
    where = f"the newest complete checkpoint, {newest}" if newest else "the beginning (no checkpoint was complete yet)"
    return f"exit status 5 on every rank; once the cause is fixed, {_RESTART} resumes from {where}"


def check_against_env(cfg: Config, env: DistEnv) -> None:
    """Config checks that need the world size; raised before any process group or data exists."""
    if cfg.data.global_batch_size < env.world_size:
        raise ConfigError(
            "data.global_batch_size",
            f"{cfg.data.global_batch_size} is smaller than the {env.world_size} processes: some would get no samples",
            f"use at least {env.world_size}",
        )


def check_closure_optimizer(cfg: Config, optimizer: Any, step: Any = None) -> None:
    """An optimizer whose step takes a closure (LBFGS) runs the whole step inside it (StrategyStep's
    closure_step): where that cannot hold, refuse naming the key."""
    name = type(optimizer).__name__
    if step is not None and (keeps_state(step) or hasattr(step, "on_split_start")):
        raise ArgumentError(
            "step",
            f"keeps state from batch to batch, and {name} calls the step many times per batch (each closure "
            "evaluation), which would move that state as often",
            "use a closure optimizer with a stateless step, or another optimizer",
        )
    if cfg.engine != "native":
        raise ConfigError("engine", f"is {cfg.engine!r}; {name} steps with a closure, which engine native runs")
    if cfg.strategy not in ("ddp", "exact"):
        raise ConfigError("strategy", f"is {cfg.strategy!r}; {name} steps with a closure: use strategy ddp or exact")
    if cfg.trainer.precision == "fp16":
        raise ConfigError(
            "trainer.precision", f"fp16's gradient scaler cannot step {name} (a closure)", "use 32 or bf16"
        )
    if cfg.trainer.on_nonfinite == "skip_step":
        raise ConfigError(
            "trainer.on_nonfinite",
            f"skip_step decides before a step, and {name}'s step evaluates inside it",
            "use stop",
        )


class Trainer:
    """One run on one rank, built whole: the state a checkpoint holds, loaded from the newest checkpoint
    where there is one, then what trains and reports from there. Every rank builds it (collective)."""

    def __init__(
        self,
        cfg: Config,
        ctx: DistContext,
        parts: Parts,
        strategy: Strategy,
        given: Given,
        signals: StopSignals,
        watchdog: Watchdog | None = None,
    ):
        self.cfg, self.ctx, self.parts, self.strategy, self.signals = cfg, ctx, parts, strategy, signals
        self.watchdog = watchdog
        self.stragglers = stragglers.Stragglers(cfg.trainer.straggler_ratio, ctx.rank, ctx.world_size)
        self.run_dir = Path(cfg.run.dir)
        self.batches = build_train_batches(
            parts.data.train,
            parts.batch_setup,
            global_batch_size=cfg.data.global_batch_size,
            shuffle=cfg.data.shuffle,
            stream=parts.stream,
            steps_per_epoch=cfg.trainer.steps_per_epoch,
        )
        steps_per_epoch = self.batches.num_steps
        # 1. What a checkpoint holds, each piece with one owner (TrainState).
        optimizer, base_lr = build_optimizer_for(cfg.optim, parts.model, given, strategy.replaces_parameters)
        self.schedule = build_schedule(
            cfg.schedule,
            optimizer,
            given=given.scheduler,
            base_lr=base_lr,
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.trainer.epochs,
            max_steps=cfg.trainer.max_steps,
        )
        callbacks = build_callbacks(cfg.callbacks, given.callbacks)
        # What fit was given, read before a resume loads saved state into these objects.
        self.definition = RunDefinition.of(parts, optimizer, self.schedule.scheduler, given, callbacks.names())
        if ctx.env.source == "ray":
            # The launcher's reporter, after the user's callbacks and outside the run's definition: the same
            # run resumes under Ray or torchrun alike.
            from distrain.launch.ray_train import RayReport

            callbacks = Callbacks([*callbacks.items, RayReport()])
        meter = build_meter(parts.objective, ctx.device, strategy.figure_units)
        stop_upwards = cfg.stop.patience and monitor_direction(
            cfg.stop.mode, cfg.stop.monitor, parts, "stop.monitor", meter.names
        )
        best_upwards = cfg.checkpoint.keep_best and monitor_direction(
            cfg.checkpoint.mode, cfg.checkpoint.monitor, parts, "checkpoint.monitor", meter.names
        )
        self.state = TrainState(
            parts.model,
            optimizer,
            self.schedule.scheduler,
            Stopper(cfg.stop, bool(stop_upwards)),
            meter,
            strategy=strategy,
            unstepped_schedule=not self.schedule.stepped,
            callbacks=callbacks,
            step_state=parts.objective if keeps_state(getattr(parts.objective, "fn", None)) else None,
        )
        if self.schedule.monitor is not None:
            monitor_direction("min", self.schedule.monitor, parts, "schedule.monitor", meter.names)
        self.saver = Saver(
            cfg.checkpoint,
            self.run_dir,
            ctx,
            epochs=cfg.trainer.epochs,
            steps_per_epoch=steps_per_epoch,
            sharded=strategy.checkpoint_format == "sharded",
            best_higher_is_better=bool(best_upwards),
        )
        if needs_closure(optimizer):
            check_closure_optimizer(cfg, optimizer, getattr(parts.objective, "fn", None))
        # 2. The model and optimizer the step trains (wrapped or not: the strategy's call).
        self.train_model, self.train_optimizer = strategy.prepare(parts.model, optimizer)
        try:
            # 3. The checkpoint loaded into those objects (in place), then the config written (only now: a
            # resume refused for a changed config leaves the run's config.yaml as it was).
            self.resume()
            write_config(cfg, ctx, self.run_dir, self.definition)
            # 4. What trains and reports from where the run stands.
            start = self.state.progress.global_step
            self.guard = NonFiniteGuard(
                cfg.trainer.on_nonfinite,
                parts.model,
                ctx.device,
                start_step=start,
                steps_per_epoch=steps_per_epoch,
                scaler=strategy.scaler,
                last_good=self._newest_good,
            )
            self.reporter = Reporter(
                cfg,
                ctx,
                self.run_dir,
                parts.model,
                start_step=start,
                total_steps=min(steps_per_epoch * cfg.trainer.epochs, cfg.trainer.max_steps or 1 << 62),
                directions=parts.metric_objects,
            )
            self.reporter.drop_from_epoch(self.state.progress.epoch)
            self.step_fn = self._build_step(optimizer)
            self.run = Run(
                parts.model,
                optimizer,
                ctx.rank,
                ctx.world_size,
                self.run_dir,
                reporter=self.reporter,
                evaluator=functools.partial(evaluate_splits, parts, ctx, strategy),
            )
            log_parts(parts, ctx, steps_per_epoch, strategy.engine, __version__, cfg.strategy)
        except BaseException:
            # A refused resume (or any failure from here on): nothing of this run may hold the wrapper or
            # the writer's group when the process group is destroyed (this object lives on in the traceback).
            self.train_model = self.train_optimizer = None
            self.saver.close(agree=False)
            if getattr(self, "reporter", None) is not None:
                self.reporter.close(plots=False)
            raise

    def _build_step(self, optimizer: Any) -> TrainStep:
        """Several models: the user's step steps them itself. One model: the strategy's gradient path."""
        if isinstance(self.parts.model, ModelSet):
            return SelfSteppingStep(self.train_model, optimizer, self.parts.objective, self.state.meter)
        return StrategyStep(
            self.strategy,
            self.train_model,
            self.train_optimizer,
            self.parts.objective,
            self.cfg.optim,  # its clipping (None: fit was given the optimizer, and there is none)
            meter=self.state.meter,
            guard=self.guard,
            progress=self.state.progress,
        )

    def resume(self) -> None:
        """The checkpoint checkpoint.resume names loaded into the state, in place. Collective."""
        maybe_resume(self.cfg, self.ctx, self.run_dir, self.state, self.definition)
        p, stopper, limit = self.state.progress, self.state.stopper, self.cfg.trainer.max_steps
        if stopper.stopped is not None and stopper.stopped.kind is StopKind.MAX_STEPS:
            if limit is None or p.global_step < limit:
                stopper.stopped = None  # a later max_steps (or none) continues the run
        if p.epoch >= self.cfg.trainer.epochs or stopper.stopped:
            log.info(
                "this run already finished (epoch %d of %d%s): nothing to train, and the figures returned are "
                "that run's (result.trained is False). To train again: a new run.dir, checkpoint.resume=never, "
                "or more trainer.epochs",
                p.epoch,
                self.cfg.trainer.epochs,
                f", {stopper.stopped}" if stopper.stopped else "",
            )

    # ------------------------------------------------------------------------------------------- the story

    def fit(self) -> FitResult:
        """For each epoch (from where the run stands): for each step: train_step, advance, log, save, check
        signals; then evaluate, log, stop, save. Every rank runs it."""
        p = self.state.progress  # one owner (TrainState): only fit() moves it; a resume loaded it in place
        trained, splits, finished = False, {}, False
        try:
            self.signals.start_agreement()
            if self.watchdog is not None:
                self.watchdog.arm()
            self.callback("on_train_start")
            for epoch in range(p.epoch, self.cfg.trainer.epochs):
                if self.state.stopper.stopped:
                    break
                started, lr = self.start_epoch(epoch)
                waited = time.perf_counter()
                for batch in self.batches:
                    stragglers.TIMES[0] += time.perf_counter() - waited  # the data wait (stragglers)
                    stepped = self.train_step(batch)
                    p.advance(step_in_epoch=batch.step + 1, skipped=not stepped)
                    progress(p.global_step)  # the hang watchdog's counter
                    self.callback("on_step_end")
                    self.maybe_log_step()
                    saved = self.maybe_save_step()
                    self.stop_on_signal(saved)
                    if self.reached_max_steps():
                        break
                    waited = time.perf_counter()
                splits = self.end_epoch(epoch, started, lr)
                self.maybe_stop(splits)
                self.maybe_save_epoch(splits)
                trained = True
            self.signals.finish_agreement(failed=False)
            result = self.result(splits, trained)
            self.callback("on_train_end", result)
            finished = True
        except BaseException as exc:
            self.callback("on_exception", exc)
            raise
        finally:
            if self.watchdog is not None:
                self.watchdog.disarm()
            if not finished:
                self.signals.finish_agreement(failed=True)
            self.close(finished)
        return result

    def callback(self, hook: str, *args: Any) -> None:
        """The callbacks' `hook` (those that have it), with the run as it stands."""
        callbacks, p = self.state.callbacks, self.state.progress
        if callbacks.has(hook):
            if hook != "on_save":  # a callback may change the weights: a background save's copy is made first
                self.saver.until_staged()
            self.run.epoch, self.run.global_step = p.epoch, p.global_step
            callbacks.call(hook, self.run, *args)

    # ----------------------------------------------------------------------------------------- the chapters

    def start_epoch(self, epoch: int) -> tuple[float, list[float]]:
        self.train_model.train()  # evaluation left it in eval mode
        self.batches.set_epoch(epoch)
        p = self.state.progress
        self.batches.set_start_step(p.step_in_epoch)
        self.reporter.start_epoch(self.state.meter, p.global_step, self.strategy.comm_figures())
        stragglers.TIMES[0] = stragglers.TIMES[1] = 0.0  # the epoch's first window starts here
        self.callback("on_epoch_start")
        start_split = getattr(self.parts.objective, "start_split", None)  # a stateful step's hook
        if start_split is not None and (p.step_in_epoch == 0 or self.state.step_state is None):
            start_split("train")  # not on a mid-epoch resume that loaded the step's saved state
        if p.step_in_epoch == 0 or self.state.epoch_lrs is None:
            self.state.epoch_lrs = self.learning_rates()
        # A mid-epoch resume keeps the lr the epoch started with (saved): the epoch's record is the same.
        return time.perf_counter(), self.state.epoch_lrs

    def learning_rates(self) -> list[float]:
        """Each parameter group's learning rate now (logged as lr, lr/group1, ...)."""
        return [float(group["lr"]) for group in self.state.optimizer.param_groups]

    def train_step(self, batch: Any) -> bool:
        """One optimizer step on this rank's share of the global batch; False when it was skipped. Collective."""
        if isinstance(self.step_fn, SelfSteppingStep):
            self.saver.until_staged()  # the user's step may change weights without an optimizer step (no fence)
        stepped = self.step_fn(batch)
        self.schedule.after_step()
        return stepped

    def maybe_log_step(self) -> None:
        step, meter = self.state.progress.global_step, self.state.meter
        if not self.reporter.wants_step(step):
            return
        self.guard.agree_finite(weights=False)  # a diverged run stops before it logs losses of 1e30
        # The window's train sums over all ranks: one all-reduce, at log steps only.
        if not self.reporter.is_log_step(step):
            self.reporter.after_step(step, meter, self.learning_rates(), None)
            return
        # Each rank's step times ride along in slots of their own (stragglers: no collective of their own).
        window = self.reporter.window(meter)
        summed = self.strategy.sum_over_ranks(torch.cat([window, self.stragglers.slots(like=window)]))
        window, times = summed[: window.numel()], summed[window.numel() :]
        steps = step - self.reporter.window_step
        step_s = (time.perf_counter() - self.reporter.window_time) / max(steps, 1)
        self.reporter.after_step(step, meter, self.learning_rates(), window, self.strategy.comm_figures())
        figures = self.stragglers.read(times, steps, step, step_s)
        if figures:
            self.reporter.log_scalars(step, figures)

    def maybe_save_step(self) -> bool:
        if not self.saver.should_save_step(self.state.progress):
            return False
        self.save()
        return True

    def stop_on_signal(self, saved: bool) -> None:
        # Collective every step: the ranks agree (one step late, asynchronously) on any rank's signal.
        signum = self.signals.agreed_signal()
        if signum is not None:
            if self.ctx.is_main:  # once for the job: every rank stops on the same verdict
                log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
            if not saved:
                self.save()
            raise Interrupted(signum)

    def end_epoch(self, epoch: int, started: float, lr: list[float]) -> dict[str, EpochMetrics]:
        """The epoch's train figures (summed over the ranks) and evaluation; logged. Collective."""
        self.guard.agree_finite()  # before the epoch's figures and its checkpoint
        meter, p = self.state.meter, self.state.progress
        splits = {"train": EpochMetrics.from_totals(self.train_sums(), meter.names)}
        train_time = time.perf_counter() - started
        self.strategy.sync(self.train_model)  # replicas that train apart (diloco) become one model first
        splits.update(evaluate_splits(self.parts, self.ctx, self.strategy))
        if self.state.callbacks.has("on_epoch_end"):
            # Before the epoch's record is written: what the callbacks log goes into it.
            self.callback("on_epoch_end", scalar_figures(splits))
        skipped = p.skipped_steps if self.cfg.trainer.on_nonfinite == "skip_step" else None
        self.reporter.log_epoch(
            epoch,
            p.global_step,
            splits,
            time.perf_counter() - started,
            lr,
            train_time_s=train_time,
            skipped_steps=skipped,
            logged=self.run.take_logged(),
        )
        p.end_epoch()
        meter.reset()
        self.schedule.after_epoch(splits)  # interval epoch; ReduceLROnPlateau reads its monitor here
        return splits

    def train_sums(self) -> Any:
        """The epoch's train sums so far over all ranks (plain sums [per name..., samples]). Collective."""
        meter = self.state.meter
        return meter.sums(self.strategy.sum_over_ranks(meter.totals().clone()))

    def reached_max_steps(self) -> bool:
        """trainer.max_steps: the run's last step is taken (the same verdict on every rank: steps are global)."""
        limit = self.cfg.trainer.max_steps
        if limit is None or self.state.progress.global_step < limit:
            return False
        self.state.stopper.stopped = StopReason(StopKind.MAX_STEPS, f"trainer.max_steps ({limit}) reached")
        return True

    def maybe_stop(self, splits: dict[str, EpochMetrics]) -> None:
        """Collective: the ranks agree on the verdict."""
        reason = self.state.stopper.update(splits)
        # Identical metrics give identical verdicts, but agree anyway: no rank may ever stop alone.
        if dist.any_true(reason is not None, self.ctx.device):
            self.state.stopper.stopped = reason or StopReason(StopKind.OTHER_RANK, "another rank stopped")
            log.info("stopping after epoch %d: %s", self.state.progress.epoch - 1, self.state.stopper.stopped)

    def maybe_save_epoch(self, splits: dict[str, EpochMetrics]) -> None:
        p = self.state.progress
        last = p.epoch == self.cfg.trainer.epochs or bool(self.state.stopper.stopped)
        if self.saver.should_save_epoch(p, last=last):
            self.save(scalar_figures(splits))

    def save(self, metrics: dict[str, float] | None = None) -> Path:
        """A checkpoint of the run as it stands. Collective."""
        progress()  # a long save is progress for the hang watchdog (and an orphan's grace), from its start
        self.guard.agree_finite()  # non-finite weights never replace good ones
        # The epoch's train sums over all ranks, so that a mid-epoch resume still reports the whole epoch.
        whole = self.strategy.checkpoint_format == "whole"
        payload = self.state.to_payload(
            self.cfg.to_dict(),
            self.ctx.world_size,
            metrics or {},
            self.train_sums(),
            weights=whole,
            definition=self.definition.values,
            # Each rank's own strategy state, to rank 0 (who writes the payload), on the CPU: a GPU tensor
            # sent as an object would be unpickled onto its own device on the receiving rank.
            strategy_states=dist.gather_object(tree_map(_on_cpu, self.strategy.state_dict())),
            # A stateful step's state (a recurrent hidden state) is per rank too.
            step_states=None
            if self.state.step_state is None
            else dist.gather_object(tree_map(_on_cpu, self.state.step_state.state_dict())),
        )
        live = (self.state.model, self.state.optimizer)
        path = self.saver.save(payload, None if whole else live, live, position=self.state.progress.position())
        progress()
        self.callback("on_save", path)
        return path

    def close(self, finished: bool) -> None:
        summary = self.stragglers.summary()
        if summary and self.ctx.is_main:
            log.info("%s", summary)
        # A background checkpoint write completes before the run ends, also when it ends by a signal
        # (the requeued job resumes from it); on a normal end every rank learns whether it succeeded.
        try:
            self.saver.close(agree=finished)
        finally:
            # Drop DDP (its reducer holds the group's last work objects) before the group is destroyed.
            self.train_model = self.train_optimizer = self.step_fn = None
            self.strategy.release()
            self.reporter.close(plots=self.cfg.log.plots and finished)

    def result(self, splits: dict[str, EpochMetrics], trained: bool) -> FitResult:
        p = self.state.progress
        if not splits:  # resumed a run that had already finished or stopped: report where it ended
            splits = evaluate_splits(self.parts, self.ctx, self.strategy)  # fsdp: padded, as every evaluation
            figures = ", ".join(
                f"{name.replace('_', ' ', 1)} {value:.4g}" for name, value in scalar_figures(splits).items()
            )
            log.info(
                "not trained by this call: the finished run's figures (epoch %d, global step %d): %s",
                p.epoch,
                p.global_step,
                figures or "none (no val or test split)",
            )
        return FitResult.of(
            splits,
            global_step=p.global_step,
            epochs_done=p.epoch,
            stopped=self.state.stopper.stopped,
            skipped_steps=p.skipped_steps,
            trained=trained,
            run_dir=str(self.run_dir),
        )

    def _newest_good(self) -> str | None:
        """The checkpoint a resume would pick (for the message when training diverges; rank 0 looks)."""
        from distrain.checkpoint.store import find_resumable

        return str(find_resumable(self.run_dir)) if self.ctx.is_main else None


def _on_cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def write_config(cfg: Config, ctx: DistContext, run_dir: Path, definition: RunDefinition | None = None) -> None:
    """Rank 0 writes the resolved config and the run's definition (what fit was given) into run.dir
    (created by own_run_dir); the others wait for them."""
    if ctx.is_main:
        atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())  # never a half-written file
        if definition is not None:
            atomic_write_bytes(run_dir / "definition.json", definition.to_json())
    dist.barrier()
