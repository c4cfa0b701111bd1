"""What is one epoch? `train_one_epoch` and `evaluate`, the same code for every launcher and both engines.

Metrics count every sample exactly once. Training: the step hands its detached logits to a `TrainMeter`
(a list append: no host sync and no extra kernels in the step), which turns them into per-sample loss and
hit sums in bulk and is summed over the ranks once per epoch. Evaluation: per-batch sums in a table summed
over the ranks, so the figures are bitwise those of one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from distrain.config import OptimConfig
from distrain.data import Batch
from distrain.engines import Engine
from distrain.objective import Objective


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

    `add` only keeps the step's detached logits and targets; `totals()` computes their per-sample losses
    and hits in one batched pass (also every `flush_elements` logits, to bound memory). Per-sample losses
    are elementwise, so they equal the step's own values; only the order of the float64 sum differs.
    """

    def __init__(self, objective: Objective, device: torch.device, flush_elements: int = 1 << 20):
        self.objective, self.flush_elements = objective, flush_elements
        self._totals = torch.zeros(3, dtype=torch.float64, device=device)
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._pending = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self._logits.append(logits.detach())
        self._targets.append(targets)
        self._pending += logits.numel()
        if self._pending >= self.flush_elements:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        if not self._logits:
            return
        logits, targets = torch.cat(self._logits).float(), torch.cat(self._targets)
        self._totals += torch.stack([self.objective.losses(logits, targets).double().sum(),
                                     self.objective.hits(logits, targets).sum().double(),
                                     torch.tensor(float(len(targets)), dtype=torch.float64, device=logits.device)])
        self._logits, self._targets, self._pending = [], [], 0

    def totals(self) -> torch.Tensor:
        """The running sums (flushed first). The tensor is live: clone it to keep a snapshot."""
        self._flush()
        return self._totals

    def load(self, totals: torch.Tensor) -> None:
        self._logits, self._targets, self._pending = [], [], 0
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
        optimizer.zero_grad(set_to_none=True)
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
    from distrain import dist

    model.eval()
    table = torch.zeros(batches.num_batches, 3, dtype=torch.float64, device=device)
    for batch in batches:
        logits = model(batch.inputs).float()
        table[batch.step, 0] = objective.losses(logits, batch.targets).double().sum()
        table[batch.step, 1] = objective.hits(logits, batch.targets).sum().double()
        table[batch.step, 2] = batch.global_size
    table = (sum_over_ranks or dist.all_reduce_sum)(table)
    return EpochMetrics.from_totals(table.sum(dim=0))
