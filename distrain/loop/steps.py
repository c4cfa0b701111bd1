"""What is one epoch? `train_one_epoch` and `evaluate`, the same code for every launcher and both engines.

Metrics count every sample exactly once. Training: the step hands its outputs to a `TrainMeter` (list
appends: no host sync and no extra kernels in the step), which turns them into per-sample loss and
accuracy sums in bulk and is summed over the ranks once per epoch. Evaluation: per-batch sums in a table
summed over the ranks, so the figures are bitwise those of one process; torchmetrics metrics are updated
per batch and computed once (distrain.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from distrain.config.schema import OptimConfig
from distrain.data import Batch
from distrain.data.structures import call_model, cat, num_samples, split
from distrain.launch import dist
from distrain.loop.metrics import MetricSet
from distrain.loop.nonfinite import NonFiniteGuard
from distrain.loop.objective import Objective
from distrain.loop.optim import zero_grad
from distrain.strategies import Engine
from distrain.strategies.fsdp import is_sharded


@dataclass(frozen=True)
class EpochMetrics:
    values: dict[str, Any]  # "loss" (the mean per-sample loss) first, then accuracy and the other metrics
    samples: int  # how many samples the figures cover

    @property
    def loss(self) -> float:
        return self.values["loss"]

    @staticmethod
    def from_totals(totals: torch.Tensor, names: list[str]) -> "EpochMetrics":
        """From [sum per name..., sample count]: each value the mean over the samples."""
        *sums, count = totals.tolist()
        count = int(count)
        return EpochMetrics({name: value / max(count, 1) for name, value in zip(names, sums)}, count)


class TrainMeter:
    """This rank's running [loss sum, (hits,) samples] of the epoch in progress (float64, not yet reduced);
    `names` says which sums: loss, and accuracy when the objective reads classes.

    `add` only keeps the step's detached outputs and targets (list appends: no kernel, no host sync).
    The per-sample losses and hits are computed from them in one batched pass when `totals()` is asked
    (at a log step, a checkpoint, the end of the epoch) or when the kept logits reach `max_held`
    elements, which bounds the memory held (4 MB of float32 by default). Batching matters: a small
    model's step is ~100 us, and per-step metric kernels or frequent small flushes cost several percent
    of it (bench/). Recomputing the losses from the logits makes the figure the exact mean of the
    per-sample losses, however the step's loss was weighted (uneven last batch, accumulation).
    """

    def __init__(self, objective: Objective, device: torch.device, max_held: int = 1 << 20):
        self.objective, self.max_held = objective, max_held
        self.names = ["loss", "accuracy"] if objective.has_accuracy else ["loss"]
        self._totals = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=device)
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._logits: list[Any] = []
        self._targets: list[Any] = []
        self._held = 0  # elements of the kept logits

    def add(self, outputs: Any, targets: Any) -> None:
        if isinstance(outputs, torch.Tensor):
            self._logits.append(outputs.detach())
            self._held += outputs.numel()
        else:
            from distrain.data.structures import leaves, tree_map

            self._logits.append(tree_map(torch.Tensor.detach, outputs))
            self._held += sum(t.numel() for t in leaves(outputs))
        self._targets.append(targets)
        if self._held >= self.max_held:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        # Only device kernels: no tensor is built from host data, which on CUDA would be a blocking copy
        # (a host sync).
        if not self._logits:
            return
        outputs, targets = cat(self._logits), cat(self._targets)
        if isinstance(outputs, torch.Tensor):
            outputs = outputs.float()
        self._totals[0] += self.objective.losses(outputs, targets).double().sum()
        if len(self.names) > 1:
            self._totals[1] += self.objective.hits(outputs, targets).sum()
        self._totals[-1] += num_samples(targets)
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
                    guard: NonFiniteGuard, accumulate_steps: int = 1, scheduler: Any = None,
                    after_step: Callable[[int], None] | None = None) -> None:
    """Train on this rank's batches. Each batch is this rank's share of one global batch: one optimizer
    step, run as `accumulate_steps` micro-batches whose gradients add up to the same total.

    `guard` sees each step's loss and may veto the optimizer step (trainer.on_nonfinite: skip_step); a
    skipped step still uses up its batch and steps the scheduler, so the data order and the learning rate
    stay functions of the global step.
    `scheduler` (None when the learning rate is constant) steps once per optimizer step.
    `after_step(step)` runs after every optimizer step on every rank (saving, logging, stop requests: see
    distrain.train); it ends the epoch early by raising. Must run on every rank: backward all-reduces.
    """
    model.train()
    for batch in batches:
        zero_grad(optimizer)
        if accumulate_steps == 1:
            with engine.autocast():
                outputs = call_model(model, batch.inputs)
                loss = objective.step_loss(outputs, batch.targets, world_size, batch.global_size)
            engine.backward(loss)
            if guard.allows_step(loss):
                engine.step(optimizer, model, optim_cfg)
                meter.add(outputs, batch.targets)
        else:
            micro = zip(split(batch.inputs, accumulate_steps), split(batch.targets, accumulate_steps))
            seen, step_loss = [], None
            for index, (inputs, targets) in enumerate(micro):
                with engine.accumulate(model, is_last=index == accumulate_steps - 1):
                    with engine.autocast():
                        outputs = call_model(model, inputs)
                        # Summed (not averaged) micro-batch losses: their gradients add up to the step's.
                        loss = objective.step_loss(outputs, targets, world_size, batch.global_size, average=False)
                    engine.backward(loss)
                seen.append((outputs, targets))
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
            if guard.allows_step(step_loss):
                engine.step(optimizer, model, optim_cfg)
                for outputs, targets in seen:
                    meter.add(outputs, targets)
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(batch.step)


@torch.no_grad()
def evaluate(model: nn.Module, batches, metrics: MetricSet, device: torch.device,
             sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EpochMetrics:
    """Loss and metrics over the whole evaluation set, each sample counted once, on any number of ranks.

    Exact, not just close: each rank writes the sums of the fixed eval batches it owns into its row of a
    [num_batches, columns + 1] table and zeros elsewhere, the table is summed over ranks (x + 0 is exact),
    and the rows are added in batch order on every rank. The figures are bitwise those of one process.
    torchmetrics metrics are updated per batch and computed once at the end (see distrain.metrics).
    Must run on every rank (one all-reduce; `sum_over_ranks` is the engine's, default distrain.dist's).
    """
    model.eval()
    metrics.reset()
    columns = metrics.columns
    table = torch.zeros(batches.num_batches, len(columns) + 1, dtype=torch.float64, device=device)
    done = 0
    for batch in batches:
        outputs = call_model(model, batch.inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = outputs.float()
        table[batch.step, :-1] = metrics.batch_sums(outputs, batch.targets)
        table[batch.step, -1] = batch.global_size
        done += 1
    if is_sharded(model):
        # Each forward of a sharded model all-gathers its weights with every rank: a rank that owns fewer
        # batches runs discarded forwards on one sample until all have run as many (else the others hang).
        for _ in range(batches.most_per_rank - done):
            call_model(model, batches.filler_inputs())
    table = (sum_over_ranks or dist.all_reduce_sum)(table)
    result = EpochMetrics.from_totals(table.sum(dim=0), columns)
    result.values.update(metrics.compute_stateful())
    return result


@torch.no_grad()
def predict_outputs(model: nn.Module, batches) -> list[Any]:
    """This rank's outputs of its evaluation batches, in batch order, on the CPU (distrain.predict)."""
    from distrain.data.structures import tree_map

    model.eval()
    return [tree_map(lambda t: t.detach().cpu(), call_model(model, batch.inputs)) for batch in batches]
