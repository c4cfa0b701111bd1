"""Optimizers by name, and gradient clipping."""

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


def clip_gradients(model: nn.Module, cfg: OptimConfig) -> None:
    """Clip after backward, when DDP has already averaged the gradients: every rank clips the same values."""
    if cfg.clip_grad_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
    if cfg.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
