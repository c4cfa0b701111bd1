"""How does the learning rate change? A built-in schedule (linear warm-up, then constant, step or cosine
decay) or any torch scheduler: named by import path in the config, or made by `fit(scheduler=fn)`.

    schedule = build_schedule(cfg.schedule, optimizer, given=fn_or_None, base_lr=..., steps_per_epoch=..., epochs=...)
    schedule.after_step()          # every optimizer step (also a skipped one): interval step
    schedule.after_epoch(splits)   # after the epoch's evaluation: interval epoch (a monitor's value passed)

The built-ins are a pure function of the global optimizer step, wrapped in torch's LambdaLR and stepped
after every optimizer step. Any scheduler's state_dict goes into every checkpoint, so a resumed run
continues the same curve, on any number of processes (a step is a global batch, the same on every rank:
every rank steps its own copy identically, no collective needed).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from distrain.config.registry import call, resolve
from distrain.config.schema import BUILT_IN_SCHEDULES, ScheduleConfig
from distrain.errors import ArgumentError, ConfigError


def lr_factor(step: int, cfg: ScheduleConfig, *, base_lr: float, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of optim.lr for the optimizer step that follows `step` completed steps."""
    warm = 1.0
    if step < cfg.warmup_steps:
        warm = cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / cfg.warmup_steps
    if cfg.name == "step":
        decay = cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    elif cfg.name == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, max(0, step - cfg.warmup_steps) / span)
        floor = cfg.min_lr / base_lr
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = 1.0
    return warm * decay


def build_scheduler(
    cfg: ScheduleConfig,
    optimizer: torch.optim.Optimizer,
    *,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    max_steps: int | None = None,
) -> LambdaLR:
    """The built-in schedule `cfg.name` (constant, step or cosine, with its warm-up) as a LambdaLR."""
    total = min(steps_per_epoch * epochs, max_steps or steps_per_epoch * epochs)  # trainer.max_steps

    def factor(step: int) -> float:
        return lr_factor(step, cfg, base_lr=base_lr, steps_per_epoch=steps_per_epoch, total_steps=total)

    return LambdaLR(optimizer, factor)


def is_constant(cfg: ScheduleConfig) -> bool:
    """True when the built-in factor is 1 at every step (nothing to step)."""
    return cfg.name == "constant" and cfg.warmup_steps == 0


@dataclass
class Schedule:
    """A torch scheduler and when the loop steps it."""

    scheduler: Any  # a torch LRScheduler (ReduceLROnPlateau included)
    interval: str  # "step": after every optimizer step; "epoch": after each epoch's evaluation
    monitor: str | None = None  # <split>_<metric> passed to step() (ReduceLROnPlateau), interval epoch
    stepped: bool = True  # False: the constant built-in, never stepped (its counter is set on save)

    def after_step(self) -> None:
        # A skipped step still steps the schedule: the learning rate stays a function of the global step.
        if self.stepped and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, splits: dict[str, Any]) -> None:
        if self.interval != "epoch":
            return
        if self.monitor is None:
            self.scheduler.step()
            return
        split, _, name = self.monitor.partition("_")
        # Every rank holds the same (all-reduced) figures: every rank's scheduler takes the same decision.
        self.scheduler.step(float(splits[split].values[name]))

    @property
    def name(self) -> str:
        cls = type(self.scheduler)
        return f"{cls.__module__}.{cls.__qualname__}"


def build_schedule(
    cfg: ScheduleConfig,
    optimizer: torch.optim.Optimizer,
    *,
    given: Callable[[torch.optim.Optimizer], Any] | None = None,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    max_steps: int | None = None,
) -> Schedule:
    """The run's schedule: fit's scheduler= function, a scheduler named by import path (schedule.name
    with schedule.args), or a built-in one."""
    if given is not None:
        if cfg.name != "constant" or cfg.warmup_steps:
            raise ArgumentError(
                "scheduler",
                f"is given, and the config sets a schedule too (schedule.name={cfg.name}, "
                f"schedule.warmup_steps={cfg.warmup_steps})",
                "give one of them: drop the config's schedule, or fit's scheduler=",
            )
        scheduler = given(optimizer)
        _check_made(scheduler, optimizer, "scheduler", ArgumentError, "the function")
        return _stepping(scheduler, cfg, fit_given=True)
    if cfg.name in BUILT_IN_SCHEDULES:
        # (schedule.interval and schedule.monitor may be set for fit's scheduler=; here they cannot apply.)
        built_in = f"the built-in schedule {cfg.name!r}"
        if cfg.interval != "step":
            raise ConfigError("schedule.interval", f"is {cfg.interval!r}, but {built_in} steps every optimizer step")
        if cfg.monitor is not None:
            raise ConfigError("schedule.monitor", f"is {cfg.monitor!r}, but {built_in} watches no metric")
        scheduler = build_scheduler(
            cfg, optimizer, base_lr=base_lr, steps_per_epoch=steps_per_epoch, epochs=epochs, max_steps=max_steps
        )
        return Schedule(scheduler, "step", None, stepped=not is_constant(cfg))
    builder = resolve("scheduler", cfg.name, "schedule.name")
    # What the run knows, passed to parameters that ask for it by name (OneCycleLR's epochs and
    # steps_per_epoch): a scheduler stepped per epoch takes one step an epoch.
    known = {
        "optimizer": optimizer,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch if cfg.interval == "step" else 1,
    }
    scheduler = call(builder, cfg.args, "schedule.args", known=known)
    _check_made(scheduler, optimizer, "schedule.name", ConfigError, cfg.name)
    return _stepping(scheduler, cfg, fit_given=False)


def _check_made(scheduler: Any, optimizer: Any, key: str, error: type, maker: str) -> None:
    if not isinstance(scheduler, LRScheduler):
        raise error(key, f"{maker} returned a {type(scheduler).__name__}, not a torch LR scheduler")
    if scheduler.optimizer is not optimizer:
        raise error(
            key,
            f"{maker} made a scheduler of another optimizer",
            "build it on the optimizer it is handed, e.g. scheduler=lambda opt: OneCycleLR(opt, ...)",
        )


def _stepping(scheduler: Any, cfg: ScheduleConfig, *, fit_given: bool) -> Schedule:
    """When the loop steps it: schedule.interval; a scheduler whose step() needs a metric (ReduceLROnPlateau)
    gets schedule.monitor's value after each epoch's evaluation."""
    needs_metric = _step_needs_metric(scheduler)
    what = "fit(scheduler=...)'s scheduler" if fit_given else cfg.name
    if needs_metric and cfg.monitor is None:
        raise ConfigError(
            "schedule.monitor",
            f"is not set, and {what} steps on a metric ({type(scheduler).__name__}.step(metrics))",
            "name the metric it watches, e.g. schedule.monitor=val_loss schedule.interval=epoch",
        )
    if cfg.monitor is not None and not needs_metric:
        raise ConfigError(
            "schedule.monitor", f"is {cfg.monitor!r}, but {what} takes no metric in step()", "drop schedule.monitor"
        )
    if needs_metric and cfg.interval != "epoch":
        raise ConfigError(
            "schedule.interval",
            f"is {cfg.interval!r}, but {what} watches {cfg.monitor}, measured once per epoch",
            "set schedule.interval=epoch",
        )
    return Schedule(scheduler, cfg.interval, cfg.monitor if needs_metric else None)


def _step_needs_metric(scheduler: Any) -> bool:
    try:
        params = list(inspect.signature(scheduler.step).parameters.values())
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0].name == "metrics" and params[0].default is inspect.Parameter.empty
