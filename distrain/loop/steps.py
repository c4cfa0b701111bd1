"""What is one step, and what is an evaluation? `StrategyStep` and `evaluate`, the same code for every
launcher and every strategy.

Metrics count every sample exactly once. Training: the step hands its outputs to a meter (loop/meters.py;
list appends: no host sync and no extra kernels in the step), which turns them into per-sample loss and
accuracy sums in bulk and is summed over the ranks once per epoch. Evaluation: per-batch sums in a table
summed over the ranks, so the figures are bitwise those of one process; torchmetrics metrics are updated
per batch and computed once (distrain.loop.metrics).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch
from torch import nn

from distrain.data import Batch
from distrain.data.structures import call_model
from distrain.launch import dist
from distrain.launch.watchdog import progress
from distrain.loop.metrics import MetricSet
from distrain.loop.nonfinite import NonFiniteGuard
from distrain.loop.optim import zero_grad
from distrain.reporting.figures import EpochMetrics, Meter
from distrain.strategies.base import Strategy
from distrain.strategies.native import clip_gradients


class TrainStep(Protocol):
    """The step convention: one optimizer step on this rank's share of one global batch. Built once with
    everything it needs (the model, optimizer, objective, meter...); must run on every rank (the gradient
    exchange is collective). Returns False when the step was skipped (trainer.on_nonfinite: skip_step):
    its batch is used up all the same, its samples stay out of the train figures."""

    def __call__(self, batch: Batch) -> bool: ...


class StrategyStep:
    """The step of one model (distrain's loss or a user's step=): the strategy makes the gradients
    (forward, backward, exchange), the non-finite guard may veto the step, the strategy steps, and each
    forward's record goes to the meter.

        zero_grad; grads = strategy.gradients(...); guard.allows_step(grads.loss)?
        strategy.step(...); meter.add(*record) for each forward; strategy.after_step(...)
    """

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        optimizer: Any,
        objective: Any,
        clip: Any,
        *,
        meter: Meter,
        guard: NonFiniteGuard,
        progress: Any,
    ):
        self.strategy, self.model, self.optimizer, self.objective, self.clip = (
            strategy,
            model,
            optimizer,
            objective,
            clip,
        )
        self.meter, self.guard, self.progress = meter, guard, progress
        self.closure = needs_closure(optimizer)

    def closure_step(self, batch: Batch) -> bool:
        """An optimizer whose step takes a closure (LBFGS) calls it as often as it needs: each call makes the
        gradients (forward, backward, exchange; clipped as optim.clip_grad_* say) and returns the global
        batch's loss, summed over the ranks, so that every rank sees the same loss and gradients and takes
        the same path (a rank's own loss would let its line search stop at another iteration: a hang).
        The first call's loss and records are the step's (the loss before the step, as in any step)."""
        step, first = self.progress.global_step, []

        def closure() -> torch.Tensor:
            zero_grad(self.optimizer)
            grads = self.strategy.gradients(self.model, batch, self.objective, step)
            if self.clip is not None and (
                self.clip.clip_grad_value is not None or self.clip.clip_grad_norm is not None
            ):
                clip_gradients(self.model, self.clip)
            if not first:
                first.append(grads)
            loss = dist.all_reduce_sum(grads.loss.detach().clone())
            return loss / dist.world_size() if grads.ranks_average else loss

        self.optimizer.step(closure)
        grads = first[0]
        self.guard.allows_step(grads.loss)  # on_nonfinite: stop (skip_step is refused with a closure)
        for record in grads.records:
            self.meter.add(*record)
        self.strategy.after_step(self.model, step + 1)
        return True

    def __call__(self, batch: Batch) -> bool:
        if self.closure:
            return self.closure_step(batch)
        zero_grad(self.optimizer)
        step = self.progress.global_step  # the step being taken (0-based)
        grads = self.strategy.gradients(self.model, batch, self.objective, step)
        if not self.guard.allows_step(grads.loss):
            return False
        self.strategy.step(self.optimizer, self.model, self.clip)
        for record in grads.records:
            self.meter.add(*record)
        self.strategy.after_step(self.model, step + 1)
        return True


def needs_closure(optimizer: Any) -> bool:
    """Whether the optimizer's step requires a closure (LBFGS: step(closure)), from its signature."""
    step = getattr(optimizer, "step", None)
    try:
        param = inspect.signature(step).parameters.get("closure") if step is not None else None
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    metrics: MetricSet,
    device: torch.device,
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
    pads: bool = False,
) -> EpochMetrics:
    """Loss and metrics over the whole evaluation set, each sample counted once, on any number of ranks.

    Exact, not just close: each rank writes the sums of the fixed eval batches it owns into its row of a
    [num_batches, columns + 1] table and zeros elsewhere, the table is summed over ranks (x + 0 is exact),
    and the rows are added in batch order on every rank. The figures are bitwise those of one process
    (with data.streams each rank sums its positions of every batch: then they agree to rounding).
    torchmetrics metrics are updated per batch and computed once at the end (see distrain.loop.metrics).
    Must run on every rank (one all-reduce; `sum_over_ranks` is the strategy's, default distrain.launch.dist's).
    `pads`: the model's forwards are collectives (strategy.pads_evaluation).
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
        progress()  # the hang watchdog's counter
    if pads:
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


def evaluate_splits(parts: Any, ctx: Any, strategy: Any = None) -> dict[str, EpochMetrics]:
    """Metrics of the val and test splits (those that exist) of a run's parts (distrain.loop.components),
    summed over the ranks by `strategy` (default: distrain.launch.dist's sum, no padding). Collective."""
    reduce = strategy.sum_over_ranks if strategy is not None else None
    pads = strategy is not None and strategy.pads_evaluation
    start_split = getattr(parts.objective, "start_split", None)  # a stateful step's hook
    splits = {}
    for split, (batches, metrics) in parts.evals.items():
        if start_split is not None:
            start_split(split)
        splits[split] = evaluate(parts.model, batches, metrics, ctx.device, reduce, pads)
    return splits
