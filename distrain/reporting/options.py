"""The `log:` and `wandb:` sections: step logging, the loggers, the progress bar, gradient norms, plots,
Weights & Biases. No torch import (the config reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distrain.config.coerce import check
from distrain.config.registry import check_name


@dataclass(kw_only=True)
class LogConfig:
    every_steps: int = 50
    """Every N optimizer steps: train loss, LR, samples/s, step time and gradient norm (W&B, and a console
    line when the output is not a terminal)."""
    progress_bar: Literal["auto", "always", "never"] = "auto"
    """A tqdm bar on rank 0: auto shows it only when stdout is a terminal (not in SLURM output files)."""
    grad_norms: bool = False
    """Also log each parameter's gradient norm at the log steps (through tensor hooks, register_hook)."""
    plots: bool = True
    """Write loss and accuracy curves (PNG) into <run.dir>/plots at the end of the run."""

    loggers: list[str] = field(default_factory=lambda: ["wandb"])
    """Where the step and epoch scalars go besides the console and metrics.jsonl: wandb (see wandb.mode:
    on only when W&B is set up), tensorboard (event files in <run.dir>/tensorboard), csv
    (<run.dir>/scalars.csv), or your own logger by import path module:attribute; [] for none."""

    def __post_init__(self) -> None:
        check(self.every_steps > 0, "log.every_steps", f"must be > 0, got {self.every_steps}")
        check(len(set(self.loggers)) == len(self.loggers), "log.loggers", f"names a logger twice: {self.loggers}")
        for name in self.loggers:
            check_name("logger", name, "log.loggers")


@dataclass(kw_only=True)
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: as WANDB_MODE says (online, offline), else online when an API key is configured (`wandb
    login`), else off (one line says how to turn it on); offline: files in <run.dir>/wandb (upload later
    with `wandb sync`); disabled: no W&B at all. Applies when log.loggers names wandb (the default)."""
    project: str = "distrain"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); null: your default."""
    name: str | None = None
    """Run name; null: the run directory's name."""
    group: str | None = None
    """Run group."""
    tags: list[str] = field(default_factory=list)
    """Run tags."""
