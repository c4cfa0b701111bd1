"""How does the learning rate change? Linear warm-up, then constant, step or cosine decay.

The factor is a pure function of the global optimizer step, wrapped in torch's LambdaLR and stepped after
every optimizer step. Its state_dict (the step count) goes into every checkpoint, so a resumed run
continues the same curve, on any number of processes (steps are global batches).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from distrain.config.schema import ScheduleConfig


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
    cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, *, base_lr: float, steps_per_epoch: int, epochs: int
) -> LambdaLR:
    total = steps_per_epoch * epochs

    def factor(step: int) -> float:
        return lr_factor(step, cfg, base_lr=base_lr, steps_per_epoch=steps_per_epoch, total_steps=total)

    return LambdaLR(optimizer, factor)


def is_constant(cfg: ScheduleConfig) -> bool:
    """True when the factor is 1 at every step (nothing to step)."""
    return cfg.name == "constant" and cfg.warmup_steps == 0
