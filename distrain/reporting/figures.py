"""What a run reports, as types the loop fills and the reporters read: an epoch's figures per split, and
the Meter protocol of the running train sums (loop/meters.py holds the meters).

    meter.add(*record)                  # each forward's record (list appends: nothing computed in the step)
    totals = meter.totals()             # this rank's running sums, in the meter's units (live tensor)
    sums = meter.sums(sum_over_ranks(totals.clone()))   # plain sums [per name..., samples]
    EpochMetrics.from_totals(sums, meter.names)         # means per sample
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


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


def scalar_figures(splits: dict[str, EpochMetrics]) -> dict[str, float]:
    """{"<split>_<name>": value} of the numeric figures (what callbacks, checkpoints and stop rules read)."""
    return {
        f"{split}_{name}": value
        for split, m in splits.items()
        for name, value in m.values.items()
        if isinstance(value, (int, float))
    }


_LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse", "mape", "perplexity")


def higher_is_better(name: str, metric: Any = None) -> bool:
    """A metric's direction: torchmetrics' own flag when it has one, else by name (losses, errors: lower)."""
    flag = getattr(metric, "higher_is_better", None)
    if isinstance(flag, bool):
        return flag
    return not any(part in name.lower() for part in _LOWER_IS_BETTER)


class Meter(Protocol):
    """This rank's running train sums of the epoch in progress: [per name..., samples] in float64."""

    names: list[str]

    def add(self, *record: Any) -> None:
        """Keep one forward's record (no kernel, no host sync)."""

    def totals(self) -> torch.Tensor:
        """The running sums in the meter's units (live: clone to keep); sum them over ranks, read with `sums`."""

    def sums(self, totals: torch.Tensor) -> torch.Tensor:
        """`totals` (or a window of them, or their sum over ranks) as plain sums."""

    def load(self, sums: torch.Tensor) -> None:
        """Continue from plain sums (a checkpoint's; the inverse of `sums`)."""

    def reset(self) -> None:
        """Start a new epoch: zero sums."""
