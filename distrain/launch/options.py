"""The `dist:` section: process-group settings. No torch import (the config reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distrain.config.coerce import check


@dataclass(kw_only=True)
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """auto: NCCL when training on CUDA, gloo on CPU."""
    timeout_s: float = 900.0
    """Seconds a collective may wait for the other ranks before the job fails instead of hanging."""

    def __post_init__(self) -> None:
        check(self.timeout_s > 0, "dist.timeout_s", f"must be > 0, got {self.timeout_s}")
