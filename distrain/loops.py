"""What is one epoch? `train_one_epoch` and `evaluate`, the same code for every launcher and both engines.

Metrics count every sample exactly once. Training: the step hands its logits to a `TrainMeter` (list
appends: no host sync and no extra kernels in the step), which turns them into per-sample loss and hit
sums in bulk and is summed over the ranks once per epoch. Evaluation: per-batch sums in a table summed
over the ranks, so the figures are bitwise those of one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from distrain import dist
from distrain.config import OptimConfig
from distrain.data import Batch
from distrain.engines import Engine
from distrain.objective import Objective
from distrain.optim import zero_grad


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


class TrainMeter:
    """This rank's running [loss sum, hits, samples] of the epoch in progress (float64, not yet reduced).

    `add` only keeps the step's detached logits and targets (list appends: no kernel, no host sync).
    The per-sample losses and hits are computed from them in one batched pass when `totals()` is asked
    (at a log step, a checkpoint, the end of the epoch) or when the kept logits reach `max_held`
    elements, which bounds the memory held (4 MB of float32 by default). Batching matters: a small
    model's step is ~100 us, and per-step metric kernels or frequent small flushes cost several percent
    of it (bench/). Recomputing the losses from the logits makes the figure the exact mean of the
    per-sample losses, however the step's loss was weighted (uneven last batch, accumulation).
    """

    def __init__(self, objective: Objective, device: torch.device, max_held: int = 1 << 20):
        self.objective, self.max_held = objective, max_held
        self._totals = torch.zeros(3, dtype=torch.float64, device=device)
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._held = 0  # elements of the kept logits

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self._logits.append(logits.detach())
        self._targets.append(targets)
        self._held += logits.numel()
        if self._held >= self.max_held:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        # Only device kernels: no tensor is built from host data, which on CUDA would be a blocking copy
        # (a host sync).
        if not self._logits:
            return
        logits, targets = torch.cat(self._logits).float(), torch.cat(self._targets)
        self._totals[0] += self.objective.losses(logits, targets).double().sum()
        self._totals[1] += self.objective.hits(logits, targets).sum()
        self._totals[2] += len(targets)
        self._reset_pending()

    def totals(self) -> torch.Tensor:
        """The running sums (flushed first). The tensor is live: clone it to keep a snapshot."""
        self._flush()
        return self._totals

    def load(self, totals: torch.Tensor) -> None:
        self._reset_pending()
        self._totals.copy_(totals)

    def reset(self) -> None:
        self.load(torch.zeros_like(self._totals))


def train_one_epoch(engine: Engine, model: nn.Module, optimizer: Any, batches: Iterable[Batch],
                    objective: Objective, optim_cfg: OptimConfig, *, world_size: int, meter: TrainMeter,
                    accumulate_steps: int = 1, scheduler: Any = None,
                    after_step: Callable[[int], None] | None = None) -> None:
    """Train on this rank's batches. Each batch is this rank's share of one global batch: one optimizer
    step, run as `accumulate_steps` micro-batches whose gradients add up to the same total.

    `scheduler` (None when the learning rate is constant) steps once per optimizer step.
    `after_step(step)` runs after every optimizer step on every rank (saving, logging, stop requests: see
    distrain.train); it ends the epoch early by raising. Must run on every rank: backward all-reduces.
    """
    model.train()
    for batch in batches:
        zero_grad(optimizer)
        if accumulate_steps == 1:
            with engine.autocast():
                logits = model(batch.inputs)
                loss = objective.step_loss(logits, batch.targets, world_size, batch.global_size)
            engine.backward(loss)
            meter.add(logits, batch.targets)
        else:
            micro = zip(batch.inputs.tensor_split(accumulate_steps), batch.targets.tensor_split(accumulate_steps))
            for index, (inputs, targets) in enumerate(micro):
                with engine.accumulate(model, is_last=index == accumulate_steps - 1):
                    with engine.autocast():
                        logits = model(inputs)
                        # Summed (not averaged) micro-batch losses: their gradients add up to the step's.
                        loss = objective.step_loss(logits, targets, world_size, batch.global_size, average=False)
                    engine.backward(loss)
                meter.add(logits, targets)
        engine.step(optimizer, model, optim_cfg)
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(batch.step)


@torch.no_grad()
def evaluate(model: nn.Module, batches, objective: Objective, device: torch.device,
             sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EpochMetrics:
    """Loss and accuracy over the whole evaluation set, each sample counted once, on any number of ranks.

    Exact, not just close: each rank writes the sums of the fixed eval batches it owns into its row of a
    [num_batches, 3] table and zeros elsewhere, the table is summed over ranks (x + 0 is exact), and the
    rows are added in batch order on every rank. The figures are bitwise those of one process.
    Must run on every rank (one all-reduce; `sum_over_ranks` is the engine's, default distrain.dist's).
    """
    model.eval()
    table = torch.zeros(batches.num_batches, 3, dtype=torch.float64, device=device)
    for batch in batches:
        logits = model(batch.inputs).float()
        table[batch.step, 0] = objective.losses(logits, batch.targets).double().sum()
        table[batch.step, 1] = objective.hits(logits, batch.targets).sum().double()
        table[batch.step, 2] = batch.global_size
    table = (sum_over_ranks or dist.all_reduce_sum)(table)
    return EpochMetrics.from_totals(table.sum(dim=0))
