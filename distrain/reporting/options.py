"""The `log:` and `wandb:` sections: step logging, the progress bar, gradient norms, plots, Weights &
Biases. No torch import (the config reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distrain.config.coerce import check


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

    def __post_init__(self) -> None:
        check(self.every_steps > 0, "log.every_steps", f"must be > 0, got {self.every_steps}")


@dataclass(kw_only=True)
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when an API key is configured, offline otherwise (upload later with `wandb sync`),
    and off if wandb is not installed; disabled: no W&B at all."""
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
