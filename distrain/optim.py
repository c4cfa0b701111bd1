"""Optimizers by name, clearing gradients, and gradient clipping."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from distrain.config import OptimConfig


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise AssertionError(f"unhandled optimizer {cfg.name}")  # config validation lists every name


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.zero_grad(set_to_none=True)`: every parameter's .grad becomes None.

    Done directly for torch's own optimizers: their zero_grad runs inside a profiler record_function
    that costs ~9 us per call whether or not a profiler is on, about 8% of the XOR model's whole step
    (bench/parts.py). An optimizer with its own zero_grad (Accelerate's wrapper, which skips it while
    accumulating; ZeroRedundancyOptimizer) gets its own.
    """
    if type(optimizer).zero_grad is not _TORCH_ZERO_GRAD:
        optimizer.zero_grad(set_to_none=True)
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


_TORCH_ZERO_GRAD = torch.optim.Optimizer.zero_grad


def clip_gradients(model: nn.Module, cfg: OptimConfig) -> None:
    """Clip after backward, when DDP has already averaged the gradients: every rank clips the same values."""
    if cfg.clip_grad_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
    if cfg.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
