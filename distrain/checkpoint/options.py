"""The `checkpoint:` section: when to save, what to keep, whether to resume. No torch import (the config
reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distrain.config.coerce import check, check_monitor

KEEP_BEST = "a count >= 0: how many of the best checkpoints to keep by checkpoint.monitor (true: 1; false or 0: none)"


@dataclass(kw_only=True)
class CheckpointConfig:
    every_epochs: int = 1
    """Save at the end of every N-th epoch (0: never at epoch ends)."""
    every_steps: int = 0
    """Save every N optimizer steps, mid-epoch too (0: off)."""
    keep_last: int = 2
    """Keep the newest K periodic checkpoints and delete older ones (0: keep all)."""
    async_save: bool = False
    """Write checkpoints in the background from a staged CPU copy while training goes on (at most one
    write in flight; the same atomic, verified files). The copy's buffers are kept for the next save: one
    CPU copy of the saved state stays allocated. A failed background write stops the run at the next save
    or at the end."""
    resume: str = "auto"
    """auto: resume from the newest complete checkpoint of run.dir; never; or a checkpoint path (or a run
    directory: its newest complete checkpoint)."""
    load: Literal["full", "weights"] = "full"
    """full: continue the run exactly (model, optimizer, schedule, progress, RNG); weights: start a new run
    from the checkpoint's model weights only (fine-tuning; needs checkpoint.resume=PATH)."""
    keep_best: int | bool = field(default=0, metadata={"means": KEEP_BEST})
    """How many of the best epoch-end checkpoints to keep by `monitor` (as best-*.pt), whatever keep_last
    does (true: 1; false or 0: none)."""
    monitor: str = "val_loss"
    """The metric keep_best ranks by, <split>_<metric> like stop.monitor (val_loss, val_accuracy, ...)."""
    mode: Literal["auto", "min", "max"] = "auto"
    """Whether `monitor` improves downwards or upwards (auto: as stop.mode)."""

    def __post_init__(self) -> None:
        check_monitor(self.monitor, "checkpoint.monitor")
        self.keep_best = int(self.keep_best)  # true: keep the best one; false: none
        check(self.keep_best >= 0, "checkpoint.keep_best", f"expected {KEEP_BEST}, got {self.keep_best}")
        check(self.every_epochs >= 0, "checkpoint.every_epochs", f"must be >= 0, got {self.every_epochs}")
        check(self.every_steps >= 0, "checkpoint.every_steps", f"must be >= 0, got {self.every_steps}")
        check(self.keep_last >= 0, "checkpoint.keep_last", f"must be >= 0, got {self.keep_last}")
        check(bool(self.resume.strip()), "checkpoint.resume", "must be auto, never or a checkpoint path")
        check(
            self.load == "full" or self.resume not in ("auto", "never"),
            "checkpoint.load",
            "is weights, which starts a new run from another run's weights: it needs checkpoint.resume=PATH",
            "set checkpoint.resume to the checkpoint (or run directory) to take the weights from",
        )
