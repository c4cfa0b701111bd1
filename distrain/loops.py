"""What is one epoch? `train_one_epoch` and `evaluate`, the same code for every launcher and both engines.

Metrics count every sample exactly once. Training: the step hands its detached loss and logits to a
`TrainMeter` (list appends: no host sync and no extra kernels in the step), which turns them into loss
and hit sums in bulk and is summed over the ranks once per epoch. Evaluation: per-batch sums in a table summed
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

    `add` only keeps the step's detached loss, logits and targets (list appends: no kernel, no host
    sync); `totals()` turns them into sums in one batched pass, as does every `flush_steps`-th add
    (bounding the memory held). The loss sum is each step's own loss times the samples it stands for
    (summed in float64), so no loss is computed twice; hits come from the kept logits.
    """

    def __init__(self, objective: Objective, device: torch.device, flush_steps: int = 128):
        self.objective, self.flush_steps = objective, flush_steps
        self._totals = torch.zeros(3, dtype=torch.float64, device=device)
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._losses: dict[float, list[torch.Tensor]] = {}  # by weight: an epoch has one or two weights
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._samples = 0

    def add(self, loss: torch.Tensor, weight: float, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """`loss` times `weight` is the sum of the per-sample losses of `targets` (see Objective.step_loss)."""
        self._losses.setdefault(weight, []).append(loss.detach())
        self._logits.append(logits.detach())
        self._targets.append(targets)
        self._samples += len(targets)
        if len(self._logits) >= self.flush_steps:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        # Only device kernels with Python scalars: no tensor is built from host data, which on CUDA would
        # be a blocking copy (a host sync) every flush_steps steps.
        if not self._logits:
            return
        for weight, losses in self._losses.items():
            self._totals[0] += torch.stack(losses).double().sum() * weight
        self._totals[1] += self.objective.hits(torch.cat(self._logits), torch.cat(self._targets)).sum()
        self._totals[2] += self._samples
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
        optimizer.zero_grad(set_to_none=True)
        if accumulate_steps == 1:
            with engine.autocast():
                logits = model(batch.inputs)
                loss, weight = objective.step_loss(logits, batch.targets, world_size, batch.global_size)
            engine.backward(loss)
            meter.add(loss, weight, logits, batch.targets)
        else:
            micro = zip(batch.inputs.tensor_split(accumulate_steps), batch.targets.tensor_split(accumulate_steps))
            for index, (inputs, targets) in enumerate(micro):
                with engine.accumulate(model, is_last=index == accumulate_steps - 1):
                    with engine.autocast():
                        logits = model(inputs)
                        # Summed (not averaged) micro-batch losses: their gradients add up to the step's.
                        loss, weight = objective.step_loss(logits, targets, world_size, batch.global_size,
                                                           average=False)
                    engine.backward(loss)
                meter.add(loss, weight, logits, targets)
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
