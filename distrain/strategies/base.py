"""The seam between the trainer and a strategy: everything a step, a save and a resume need, nothing more."""

from __future__ import annotations

from typing import Any, ContextManager, Protocol

import torch
from torch import nn

from distrain.config.schema import OptimConfig


class Strategy(Protocol):
    engine: str
    """Who runs the step: native (torch) or accelerate; recorded in checkpoints (either loads the other's)."""
    sharded: bool
    """Checkpoint format: True, every rank writes its shards (a folder); False, rank 0 writes one .pt.
    Sharded forwards are collectives, so evaluation pads a rank's missing batches with discarded forwards."""
    replaces_parameters: bool
    """setup() swaps the model's parameters for new tensors: an optimizer built before it would step stale ones."""
    scaler: Any
    """The gradient scaler whose state goes into checkpoints (fp16), else None."""

    def setup(self, model: nn.Module) -> nn.Module:
        """Before the optimizer exists: shard the model in place (fsdp); the others leave it as it is."""

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """The model and optimizer the step trains (wrapped for data parallelism when world_size > 1).
        The caller keeps the unwrapped model for evaluation and checkpoints."""

    def sync_gradients(self, model: nn.Module, is_last: bool) -> ContextManager:
        """Context for one micro-batch of a step: gradients are reduced over the ranks only on the last."""

    def autocast(self) -> ContextManager:
        """Mixed-precision context for the forward pass and the loss."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss already weighted for the global batch (Objective.step_loss)."""

    def step(self, optimizer: Any, model: nn.Module, clip: OptimConfig) -> None:
        """Unscale (fp16), clip as `clip` (optim.clip_grad_norm, optim.clip_grad_value) says, step the optimizer."""

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks (in place where possible). Collective."""

    def release(self) -> None:
        """Drop the wrapped model before the process group is destroyed."""
