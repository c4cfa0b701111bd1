"""Optimizers by name (any torch.optim class, or a user's by import path), and clearing gradients (gradient
clipping is the strategy's: distrain.strategies).

    optim: {name: sgd, lr: 0.1, args: {momentum: 0.9, nesterov: true}}
    optim: {name: torch.optim:NAdam, lr: 0.002, args: {momentum_decay: 0.004}}
"""

from __future__ import annotations

import functools
from typing import Iterable

import torch
from torch import nn

from distrain.config.registry import call, resolve
from distrain.config.schema import OptimConfig
from distrain.errors import ConfigError


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """cfg.name's class called as cls(trainable params, lr=cfg.lr, **cfg.args); bad arguments are config
    errors naming optim.args.<name> (torch's own value checks too: "Invalid momentum value")."""
    params = [p for p in params if p.requires_grad]
    if cfg.lr is None:
        raise ConfigError(
            "optim.lr",
            "required key is missing (no optimizer was given)",
            "set optim.lr (and optim.name) in the config, or pass optimizer= to distrain.fit",
        )
    cls = resolve("optim", cfg.name, "optim.name")
    if "lr" in cfg.args:
        raise ConfigError("optim.args.lr", "the learning rate is optim.lr", "move it to optim.lr")
    try:
        return call(functools.partial(cls, params, lr=cfg.lr), cfg.args, "optim.args")
    except (ValueError, TypeError) as exc:
        raise ConfigError("optim.args", f"{cfg.name}: {exc}") from None


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
