"""Where else do the run's scalars go? The loggers that `log.loggers` names: W&B, TensorBoard, CSV, or
your own by import path, each built on global rank 0 only.

    log:
      loggers: [wandb, tensorboard, csv, mypkg.loggers:JsonLinesLogger]   # default: [wandb]

A logger is any object with

    log_scalars(step: int, values: dict[str, float])  # named scalars at one global optimizer step

and, if it wants them,

    log_epoch(epoch: int, step: int, records: list[dict])  # the epoch's metrics.jsonl records, one per split
    log_summary(values: dict[str, float])                  # best/<split>_<metric> so far (W&B's run summary)
    close()                                                # at the end of the run, also after an error

made by the class or function the name stands for (registered like every component:
`distrain.register("logger", "mine", MyLogger)` gives a short name). It is called with the keyword
arguments it asks for among `run_dir` (the run directory, a Path), `cfg` (the run's Config: your own
options can live under `user:`) and `start_step` (the global step this run starts or resumes at: a
logger that keeps files drops what it wrote for later steps, which the resumed run writes again);
a builder may return None (nothing to log to, as W&B without credentials).

What reaches every logger through `log_scalars`: every `log.every_steps` steps `train/step_loss` (and
`train/step_accuracy`), `lr`, `samples_per_s`, `step_time_s`, `grad_norm` (and `grad_norm/<parameter>`
with `log.grad_norms`); after each epoch `epoch`, `<split>/<metric>` for every split and metric,
`epoch_lr`, `epoch_time_s`, `epoch_train_time_s`, `epoch_samples_per_s`; and whatever is handed to
`Reporter.log_scalars`. metrics.jsonl is not one of them: it is the run's own record (plots, best
figures and resume read it), always written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distrain.config.registry import call, resolve
from distrain.errors import ConfigError

if TYPE_CHECKING:
    from distrain.config.schema import Config

log = logging.getLogger("distrain")


def check_loggers(names: list[str]) -> list[Any]:
    """Import every logger `log.loggers` names (an import that fails is a ConfigError naming the key).
    Every rank calls it, so a bad name stops every rank alike rather than rank 0 alone."""
    builders = [resolve("logger", name, "log.loggers") for name in names]
    for name, builder in zip(names, builders):
        check = getattr(builder, "check_available", None)
        if check is not None:
            check()  # e.g. TensorBoard without the tensorboard package
        elif not callable(builder):
            raise ConfigError("log.loggers", f"{name!r} is not a class or function that makes a logger")
    return builders


def build_loggers(cfg: Config, run_dir: Path, start_step: int) -> list[Any]:
    """The loggers of `log.loggers`, built. Global rank 0 only."""
    known = {"run_dir": run_dir, "cfg": cfg, "start_step": start_step}
    loggers = []
    for name, builder in zip(cfg.log.loggers, check_loggers(cfg.log.loggers)):
        logger = call(builder, {}, "log.loggers", known=known)
        if logger is None:
            continue
        if not callable(getattr(logger, "log_scalars", None)):
            raise ConfigError(
                "log.loggers",
                f"{name!r} made a {type(logger).__name__}, which has no log_scalars(step, values) method",
                "a logger needs log_scalars(step, values); log_epoch, log_summary and close are optional",
            )
        loggers.append(logger)
    return loggers
