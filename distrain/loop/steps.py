"""What is one step, and what is an evaluation? `train_step` and `evaluate`, the same code for every launcher
and every strategy.

Metrics count every sample exactly once. Training: the step hands its outputs to a `TrainMeter` (list
appends: no host sync and no extra kernels in the step), which turns them into per-sample loss and
accuracy sums in bulk and is summed over the ranks once per epoch. Evaluation: per-batch sums in a table
summed over the ranks, so the figures are bitwise those of one process; torchmetrics metrics are updated
per batch and computed once (distrain.loop.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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
from distrain.strategies.base import Strategy
from distrain.strategies.fsdp import is_sharded


@dataclass(frozen=True)
class EpochMetrics:
    values: dict[str, Any]  # "loss" (the mean per-sample loss) first, then accuracy and the other metrics
    samples: int  # how many samples the figures cover

    @property
    def loss(self) -> float:
        return self.values["loss"]

    @staticmethod
    def from_totals(totals: torch.Tensor, names: list[str]) -> EpochMetrics:
        """From [sum per name..., sample count]: each value the mean over the samples."""
        *sums, count = totals.tolist()
        count = int(count)
        return EpochMetrics({name: value / max(count, 1) for name, value in zip(names, sums)}, count)


EXACT_UNITS = float(2**24)  # trainer.exact: per-sample figures kept in multiples of 2^-24


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

    def __init__(self, objective: Objective, device: torch.device, max_held: int = 1 << 20, exact: bool = False):
        self.objective, self.max_held = objective, max_held
        self.names = ["loss", "accuracy"] if objective.has_accuracy else ["loss"]
        self._totals = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=device)
        # trainer.exact: per-sample figures are rounded to multiples of 2^-24 and kept as integers (in
        # float64, exact below 2^53), so the sums over samples and ranks come out the same in any order.
        self.exact = exact
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
        self._totals[0] += self._units(self.objective.losses(outputs, targets).double()).sum()
        if len(self.names) > 1:
            self._totals[1] += self._units(self.objective.hits(outputs, targets)).sum()
        self._totals[-1] += num_samples(targets)
        self._reset_pending()

    def _units(self, values: torch.Tensor) -> torch.Tensor:
        return torch.round(values * EXACT_UNITS) if self.exact else values

    def totals(self) -> torch.Tensor:
        """The running sums (flushed first), in the meter's units: sum them over ranks, then read them with
        `sums`. The tensor is live: clone it to keep a snapshot."""
        self._flush()
        return self._totals

    def sums(self, totals: torch.Tensor) -> torch.Tensor:
        """`totals` (or a window of them, or their sum over ranks) as plain sums [per name..., samples]."""
        if not self.exact:
            return totals
        out = totals.clone()
        out[:-1] /= EXACT_UNITS  # a power of two: exact
        return out

    def load(self, sums: torch.Tensor) -> None:
        """Continue from plain sums (a checkpoint's; the inverse of `sums`)."""
        self._reset_pending()
        self._totals.copy_(sums)
        if self.exact:
            self._totals[:-1] *= EXACT_UNITS

    def reset(self) -> None:
        self.load(torch.zeros_like(self._totals))


def train_step(
    strategy: Strategy,
    model: nn.Module,
    optimizer: Any,
    batch: Batch,
    objective: Objective,
    clip: OptimConfig,
    *,
    world_size: int,
    micro_batches: int,
    meter: TrainMeter,
    guard: NonFiniteGuard,
) -> bool:
    """One optimizer step on this rank's share of one global batch, run as `micro_batches` micro-batches
    whose gradients add up to the same total (one micro-batch: no accumulation, the same path). Returns
    whether the optimizer stepped: `guard` sees the step's loss and may veto it (trainer.on_nonfinite:
    skip_step); a vetoed step's samples stay out of the train metrics. Must run on every rank: backward
    reduces the gradients.
    """
    zero_grad(optimizer)
    pieces = (
        ((batch.inputs, batch.targets),)
        if micro_batches == 1
        else tuple(zip(split(batch.inputs, micro_batches), split(batch.targets, micro_batches)))
    )
    seen, step_loss = [], None
    for index, (inputs, targets) in enumerate(pieces):
        with strategy.sync_gradients(model, is_last=index == micro_batches - 1):
            with strategy.autocast():
                # One micro-batch: its weighted mean (one kernel). Several: weighted sums, whose gradients
                # add up to the step's. (A user's step= answers here: loop/user_step.py.)
                loss, record = objective.forward_loss(
                    model, inputs, targets, world_size, batch.global_size, average=micro_batches == 1
                )
            strategy.backward(loss)
        seen.append(record)
        step_loss = loss if step_loss is None else step_loss + loss.detach()
    return finish_step(strategy, model, optimizer, clip, step_loss, seen, meter=meter, guard=guard)


def finish_step(
    strategy: Strategy,
    model: nn.Module,
    optimizer: Any,
    clip: OptimConfig,
    step_loss: torch.Tensor,
    seen: list[Any],
    *,
    meter: TrainMeter,
    guard: NonFiniteGuard,
) -> bool:
    """After backward (the gradients reduced): the guard's verdict, the optimizer step, and the step's
    outputs to the meter; a vetoed step's samples stay out of the train metrics. Shared by every step."""
    if not guard.allows_step(step_loss):
        return False
    strategy.step(optimizer, model, clip)
    for record in seen:
        meter.add(*record)
    return True


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    metrics: MetricSet,
    device: torch.device,
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EpochMetrics:
    """Loss and metrics over the whole evaluation set, each sample counted once, on any number of ranks.

    Exact, not just close: each rank writes the sums of the fixed eval batches it owns into its row of a
    [num_batches, columns + 1] table and zeros elsewhere, the table is summed over ranks (x + 0 is exact),
    and the rows are added in batch order on every rank. The figures are bitwise those of one process.
    torchmetrics metrics are updated per batch and computed once at the end (see distrain.loop.metrics).
    Must run on every rank (one all-reduce; `sum_over_ranks` is the engine's, default distrain.launch.dist's).
    """
    model.eval()
    metrics.reset()
    columns = metrics.columns
    table = torch.zeros(batches.num_batches, len(columns) + 1, dtype=torch.float64, device=device)
    done = 0
    for batch in batches:
        table[batch.step, :-1] = metrics.batch_sums_of(model, batch.inputs, batch.targets)
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


def evaluate_splits(
    parts: Any, ctx: Any, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, EpochMetrics]:
    """Metrics of the val and test splits (those that exist) of a run's parts (distrain.loop.components).
    Collective."""
    return {
        split: evaluate(parts.model, batches, metrics, ctx.device, sum_over_ranks)
        for split, (batches, metrics) in parts.evals.items()
    }
