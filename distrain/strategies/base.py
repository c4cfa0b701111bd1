"""The seam between the shared loops (distrain.loops) and an engine: everything a step needs, nothing more."""

from __future__ import annotations

from typing import Any, ContextManager, Protocol

import torch
from torch import nn

from distrain.config.schema import OptimConfig


class Engine(Protocol):
    name: str
    scaler: Any
    """The gradient scaler whose state goes into checkpoints (fp16), else None."""

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """The model and optimizer the loops train (wrapped for data parallelism when world_size > 1).
        The caller keeps the unwrapped model for evaluation and checkpoints."""

    def accumulate(self, model: nn.Module, is_last: bool) -> ContextManager:
        """Context for one micro-batch of an accumulated step: gradients sync only on the last one."""

    def autocast(self) -> ContextManager:
        """Mixed-precision context for the forward pass and the loss."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss already weighted for the global batch (Objective.step_loss)."""

    def step(self, optimizer: Any, model: nn.Module, cfg: OptimConfig) -> None:
        """Unscale (fp16), clip as cfg says, step the optimizer."""

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks (in place where possible). Collective."""

    def release(self) -> None:
        """Drop the wrapped model before the process group is destroyed."""
