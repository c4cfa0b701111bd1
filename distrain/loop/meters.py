"""The train meters: this rank's running sums of the epoch in progress (reporting/figures.py's Meter).

- TrainMeter: distrain's step; it keeps each forward's outputs and targets and computes per-sample losses
  (and hits) from them in bulk;
- StepMeter: a user's step; it keeps the values the step returned.

Both keep [sum per name..., samples] in float64, not yet reduced over the ranks. With `units` (a power of
two, the strategy's figure_units: exact mode), each per-sample figure is rounded to a multiple of
1/units and kept as an integer count (exact below 2^53), so sums over samples and ranks come out the
same in any order. `build_meter` picks the meter for the objective.
"""

from __future__ import annotations

from typing import Any

import torch

from distrain.data.structures import cat, leaves, num_samples, tree_map


class Totals:
    """The arithmetic both meters share: running sums in units, read as plain sums, loaded from them."""

    def __init__(self, names: list[str], device: torch.device, units: float | None):
        self.names, self.units = names, units
        self._totals = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)

    def _in_units(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.units is None else torch.round(values * self.units)

    def sums(self, totals: torch.Tensor) -> torch.Tensor:
        """`totals` (or a window of them, or their sum over ranks) as plain sums [per name..., samples]."""
        if self.units is None:
            return totals
        out = totals.clone()
        out[:-1] /= self.units  # a power of two: exact
        return out

    def load(self, sums: torch.Tensor) -> None:
        """Continue from plain sums (a checkpoint's; the inverse of `sums`)."""
        self._drop_pending()
        self._totals.copy_(sums)
        if self.units is not None:
            self._totals[:-1] *= self.units

    def reset(self) -> None:
        self.load(torch.zeros_like(self._totals))

    def _drop_pending(self) -> None:
        raise NotImplementedError


class TrainMeter(Totals):
    """This rank's running [loss sum, (hits,) samples] of the epoch in progress; `names` says which sums:
    loss, and accuracy when the objective reads classes.

    `add` only keeps the step's detached outputs and targets (list appends: no kernel, no host sync).
    The per-sample losses and hits are computed from them in one batched pass when `totals()` is asked
    (at a log step, a checkpoint, the end of the epoch) or when the kept logits reach `max_held`
    elements, which bounds the memory held (4 MB of float32 by default). Batching matters: a small
    model's step is ~100 us, and per-step metric kernels or frequent small flushes cost several percent
    of it (bench/). Recomputing the losses from the logits makes the figure the exact mean of the
    per-sample losses, however the step's loss was weighted (uneven last batch, accumulation).
    """

    def __init__(self, objective: Any, device: torch.device, max_held: int = 1 << 20, units: float | None = None):
        super().__init__(["loss", "accuracy"] if objective.has_accuracy else ["loss"], device, units)
        self.objective, self.max_held = objective, max_held
        self._drop_pending()

    def _drop_pending(self) -> None:
        self._logits: list[Any] = []
        self._targets: list[Any] = []
        self._held = 0  # elements of the kept logits

    def add(self, outputs: Any, targets: Any) -> None:
        if isinstance(outputs, torch.Tensor):
            self._logits.append(outputs.detach())
            self._held += outputs.numel()
        else:
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
        self._totals[0] += self._in_units(self.objective.losses(outputs, targets).double()).sum()
        if len(self.names) > 1:
            self._totals[1] += self._in_units(self.objective.hits(outputs, targets)).sum()
        self._totals[-1] += num_samples(targets)
        self._drop_pending()

    def totals(self) -> torch.Tensor:
        """The running sums (flushed first), in the meter's units: sum them over ranks, then read them with
        `sums`. The tensor is live: clone it to keep a snapshot."""
        self._flush()
        return self._totals


class StepMeter(Totals):
    """A user's step's figures (loop/user_step.py): `add` keeps the step's detached values (a per-sample
    value, or a chunk's sum, with its weight); they are summed when `totals()` is asked."""

    def __init__(self, objective: Any, device: torch.device, units: float | None = None):
        super().__init__(list(objective.names), device, units)
        self._drop_pending()

    def _drop_pending(self) -> None:
        self._pending: list[tuple[dict[str, tuple[torch.Tensor, int]], int]] = []

    def add(self, values: dict[str, tuple[torch.Tensor, int]], count: int) -> None:
        self._pending.append((values, count))

    @torch.no_grad()
    def totals(self) -> torch.Tensor:
        """The running sums (pending values added first); see TrainMeter.totals."""
        if self._pending:
            for i, name in enumerate(self.names):
                value = torch.stack([v[name][0].double() * v[name][1] for v, _ in self._pending])
                self._totals[i] += self._in_units(value).sum()
            self._totals[-1] += sum(count for _, count in self._pending)
            self._pending = []
        return self._totals


def build_meter(objective: Any, device: torch.device, units: float | None) -> TrainMeter | StepMeter:
    """The meter of the train figures: from the outputs (distrain's step), or the values a user's step
    returned (its objective names its figures). `units`: the strategy's figure_units."""
    from distrain.loop.user_step import StepObjective

    if isinstance(objective, StepObjective):
        return StepMeter(objective, device, units=units)
    return TrainMeter(objective, device, units=units)
