"""What is one epoch? `train_one_epoch` and `evaluate`, the same code in every launch mode.

Metrics count every sample exactly once: sums of per-sample losses and hits and the number of samples are
accumulated on the device (no host sync inside the step) and summed over the ranks once per epoch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from distrain import dist
from distrain.config import OptimConfig
from distrain.data import Batch
from distrain.objective import Objective
from distrain.optim import clip_gradients
from distrain.precision import Precision


@dataclass(frozen=True)
class EpochMetrics:
    loss: float  # mean per-sample loss
    accuracy: float
    samples: int  # how many samples the figures cover

    @staticmethod
    def from_totals(totals: torch.Tensor) -> "EpochMetrics":
        loss_sum, hits, count = totals.tolist()
        count = int(count)
        return EpochMetrics(loss_sum / max(count, 1), hits / max(count, 1), count)


def new_totals(device: torch.device) -> torch.Tensor:
    """Running [loss sum, hits, samples] of this rank, in float64 so long epochs do not lose precision."""
    return torch.zeros(3, dtype=torch.float64, device=device)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch],
                    objective: Objective, optim_cfg: OptimConfig, *, world_size: int, totals: torch.Tensor,
                    precision: Precision | None = None, accumulate_steps: int = 1,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    after_step: Callable[[int], None] | None = None) -> None:
    """Train on this rank's batches, adding to `totals` (this rank's running sums, not yet reduced).

    Each batch is this rank's share of one global batch: one optimizer step. With accumulate_steps > 1
    the share is run as that many micro-batches whose gradients add up to the same total.
    `after_step(step)` runs after every optimizer step on every rank (saving, stop requests: see
    distrain.train); it ends the epoch early by raising. Must run on every rank: backward all-reduces.
    """
    precision = precision or Precision("32", totals.device)
    model.train()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        micro = zip(batch.inputs.tensor_split(accumulate_steps), batch.targets.tensor_split(accumulate_steps))
        for index, (inputs, targets) in enumerate(micro):
            # DDP all-reduces gradients inside backward. Under no_sync it only accumulates them locally,
            # so the micro-batches before the last add up without communication and the last one sends
            # the sum once (rather than one all-reduce per micro-batch).
            is_last = index == accumulate_steps - 1
            sync = contextlib.nullcontext() if is_last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with precision.autocast():
                    logits = model(inputs)
                    losses = objective.losses(logits, targets)
                # Weight by the *global* batch size, not the local one: DDP averages gradients over ranks,
                # so sum_local * world / global_size averages to the gradient of the global batch's mean
                # loss even when the last batch splits unevenly (a local mean would over-weight the
                # smaller shares), and micro-batch gradients simply add up.
                precision.backward(losses.sum() * (world_size / batch.global_size))
            with torch.no_grad():
                totals += torch.stack([losses.detach().sum().double(),
                                       objective.hits(logits, targets).sum().double(),
                                       torch.tensor(float(len(targets)), dtype=torch.float64,
                                                    device=totals.device)])
        precision.unscale(optimizer)
        clip_gradients(model, optim_cfg)
        precision.step(optimizer)
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(batch.step)


def reduce_totals(totals: torch.Tensor) -> EpochMetrics:
    """Sum every rank's totals. Collective: every rank must call it."""
    return EpochMetrics.from_totals(dist.all_reduce_sum(totals.clone()))


@torch.no_grad()
def evaluate(model: nn.Module, batches, objective: Objective, device: torch.device) -> EpochMetrics:
    """Loss and accuracy over the whole evaluation set, each sample counted once, on any number of ranks.

    Exact, not just close: each rank writes the sums of the fixed eval batches it owns into its row of a
    [num_batches, 3] table and zeros elsewhere, the table is summed over ranks (x + 0 is exact), and the
    rows are added in batch order on every rank. The figures are bitwise those of one process.
    Must run on every rank (one all-reduce).
    """
    model.eval()
    table = torch.zeros(batches.num_batches, 3, dtype=torch.float64, device=device)
    for batch in batches:
        logits = model(batch.inputs)
        table[batch.step, 0] = objective.losses(logits, batch.targets).double().sum()
        table[batch.step, 1] = objective.hits(logits, batch.targets).sum().double()
        table[batch.step, 2] = batch.global_size
    dist.all_reduce_sum(table)
    return EpochMetrics.from_totals(table.sum(dim=0))
