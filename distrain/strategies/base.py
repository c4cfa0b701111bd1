"""The seam between the trainer and a strategy: the whole gradient path, the checkpoint format and the
state a strategy keeps. The trainer never asks which strategy it runs; it calls these, in this order:

    model = strategy.setup(model)                              # before the optimizer exists (fsdp shards)
    train_model, train_optimizer = strategy.prepare(model, optimizer)
    each step:
        grads = strategy.gradients(train_model, batch, objective, global_step)   # forward, backward, exchange
        strategy.step(train_optimizer, train_model, clip)                        # unscale, clip, step
        strategy.after_step(train_model, global_step + 1)                        # weight averaging, if any
    strategy.sync(train_model)                                 # before evaluation: one model on every rank
    strategy.sum_over_ranks(totals)                            # metrics: a sum over the ranks (collective)
    strategy.state_dict() / load_state_dict(state)             # in every checkpoint (per rank)
    strategy.release()                                         # before the process group goes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

CheckpointFormat = Literal["whole", "sharded"]


class ModelSet(nn.ModuleDict):
    """Several models trained together (a GAN: model={"g": G, "d": D}), one module for checkpoints (its
    weights are "g.<name>", "d.<name>"); never called itself: the user's step calls each by name. A
    strategy's prepare() wraps each on its own, or its setup() refuses them by name."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from distrain.errors import ArgumentError

        raise ArgumentError("model", "a dict of models is not called as one: the step calls each by name")


def refuse_several(model: nn.Module, key: str, value: str) -> None:
    """For a strategy that trains one model: several models are refused naming its config key (exit 2)."""
    if isinstance(model, ModelSet):
        from distrain.errors import ConfigError

        raise ConfigError(key, f"is {value!r}: several models train with strategy ddp and engine native")


@dataclass
class Gradients:
    """What one step's forward and backward leave besides the parameters' .grad (already exchanged)."""

    loss: torch.Tensor
    """This rank's part of the step's loss (detached): the non-finite guard reads it."""
    records: list[tuple[Any, ...]]
    """What the train meter records, one entry per forward (micro-batch or chunk): `meter.add(*record)`."""
    ranks_average: bool = True
    """The global batch's loss is the mean of the ranks' `loss` (DDP's convention: each rank's part is
    scaled as if it were the whole); False: their sum (exact mode). A closure optimizer is given it."""


class Strategy(Protocol):
    engine: str
    """Who runs the step: native (torch) or accelerate; recorded in checkpoints (either loads the other's)."""
    checkpoint_format: CheckpointFormat
    """whole: rank 0 writes one .pt (every rank holds the same state); sharded: every rank writes its shards."""
    pads_evaluation: bool
    """The model's forwards are collectives (sharded weights are gathered): a rank with fewer evaluation
    batches runs discarded forwards until every rank has run as many."""
    loads_into_shards: bool
    """A whole (.pt) checkpoint is handed out shard by shard on resume: the live model is sharded (set by
    setup()); a sharded checkpoint is always read shard by shard, into whatever the model is."""
    replaces_parameters: bool
    """setup() swaps the model's parameters for new tensors: an optimizer built before it would step stale ones."""
    scaler: Any
    """The gradient scaler whose state goes into checkpoints (fp16), else None."""
    figure_units: float | None
    """None: train figures are plain float64 sums. A power of two u: each per-sample figure is rounded to a
    multiple of 1/u before it is summed, so the sums are the same in any order (exact mode)."""

    def setup(self, model: nn.Module) -> nn.Module:
        """Before the optimizer exists: shard the model in place (fsdp), refuse what the strategy cannot
        train (exact mode: SyncBatchNorm; several models where not supported), or leave it."""

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """The model and optimizer the step trains (wrapped for data parallelism when world_size > 1; a
        dict of models: each wrapped on its own). The caller keeps the unwrapped model for evaluation
        and checkpoints."""

    def gradients(self, model: nn.Module, batch: Any, objective: Any, global_step: int) -> Gradients:
        """Forward and backward of this rank's share of one global batch (`objective.forward_loss` for each
        micro-batch or chunk), and the exchange of the gradients over the ranks: afterwards every rank
        holds the gradient of the global batch's mean loss. `global_step`: the step being taken. Collective."""

    def step(self, optimizer: Any, model: nn.Module, clip: Any) -> None:
        """Unscale (fp16), clip as `clip` (optim.clip_grad_norm, optim.clip_grad_value) says, step."""

    def after_step(self, model: nn.Module, global_step: int) -> None:
        """After the optimizer step (`global_step` steps taken): strategies that average weights do it here."""

    def sync(self, model: nn.Module) -> None:
        """Make every rank's weights the run's (strategies whose replicas train apart average them here):
        before each evaluation, so that the figures and the epoch's checkpoint are of one model. Collective."""

    def comm_figures(self) -> dict[str, float]:
        """Cumulative figures of this rank's gradient exchange: comm_bytes (payload handed to collectives)
        and, where measured, comm_wait_s (time the step waited for it). The step log shows their change."""

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks (in place where possible). Collective."""

    def state_dict(self) -> dict[str, Any]:
        """This rank's state of the strategy itself (saved per rank in every checkpoint)."""

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from this rank's `state_dict()` in a checkpoint; None when the checkpoint was written on
        another world size (or holds none): re-derive the state, or refuse the resume naming the key."""

    def release(self) -> None:
        """Drop the wrapped model before the process group is destroyed."""


class StrategyDefaults:
    """What most strategies keep as it is: no weight averaging after a step, no state of their own, the
    sum over ranks by distrain.launch.dist, nothing to release. A strategy overrides what it changes."""

    loads_into_shards = False
    pads_evaluation = False
    replaces_parameters = False
    figure_units: float | None = None

    def after_step(self, model: nn.Module, global_step: int) -> None:
        pass

    def sync(self, model: nn.Module) -> None:
        pass

    def comm_figures(self) -> dict[str, float]:
        return {}

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        from distrain.launch import dist

        return dist.all_reduce_sum(tensor)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass

    def release(self) -> None:
        pass
