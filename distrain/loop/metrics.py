"""What is measured besides the loss: accuracy, torchmetrics metrics and the user's metric functions,
over every validation and test sample exactly once, on any number of ranks.

    metrics: {f1: {name: torchmetrics.classification:MulticlassF1Score, args: {num_classes: 3, average: macro}},
              mae: {name: mae}, mine: {name: mypkg.metrics:within_10_percent}}

Two kinds, each computed the exact way it allows:
- per-sample metrics (accuracy, mae, mse, a user function metric(preds, targets) returning one value per
  sample, or a batch mean counted for each sample): summed per fixed evaluation batch into the batch table
  that the loss uses, all-reduced and added in batch order, so the figures are bitwise those of one
  process on any number of ranks;
- torchmetrics `Metric`s (anything with update/compute/reset): `update` on this rank's batches, `compute`
  once, which gathers their states over the ranks (torchmetrics' own sync). Each rank's batches are a
  contiguous run of whole batches and nothing is padded, so every sample counts once: count-based states
  (F1, precision, recall, confusion matrices) equal one process exactly, float sums (R2, MAE) to rounding.
Metrics receive (preds, targets) as `Objective.predictions` reads them: class probabilities and labels,
0/1 labels and probabilities for binary and multilabel tasks, outputs shaped like the targets for regression.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Mapping

import torch

from distrain.config.registry import call, resolve
from distrain.config.schema import MetricConfig
from distrain.errors import ConfigError
from distrain.loop.objective import Objective
from distrain.reporting.figures import higher_is_better


def accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample accuracy: argmax == label for class scores, else threshold 0.5 (multilabel: the fraction
    of labels right). For classification losses distrain reads it from the raw outputs (Objective.hits)."""
    if preds.dim() == targets.dim() + 1:
        return (preds.argmax(dim=-1) == targets).to(torch.float64)
    return ((preds > 0.5) == (targets > 0.5)).reshape(len(preds), -1).to(torch.float64).mean(dim=1)


def mean_absolute_error(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample |pred - target| (averaged over a sample's values)."""
    return (preds.double() - targets.double()).abs().reshape(len(preds), -1).mean(dim=1)


def mean_squared_error(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample (pred - target)^2 (averaged over a sample's values)."""
    return (preds.double() - targets.double()).square().reshape(len(preds), -1).mean(dim=1)


def is_stateful(metric: Any) -> bool:
    """A torchmetrics-style metric: update per batch, compute once, reset."""
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


def build_metric(name: str, cfg: MetricConfig) -> Any:
    key = f"metrics.{name}"
    obj = resolve("metric", cfg.name, f"{key}.name")
    if isinstance(obj, type):
        return call(obj, cfg.args, f"{key}.args")
    if not callable(obj):
        raise ConfigError(f"{key}.name", f"{cfg.name!r} is not a metric class or function")
    return functools.partial(obj, **cfg.args) if cfg.args else obj


class MetricSet:
    """The metrics of one evaluated split. `columns`: the per-sample ones, loss first; `stateful`: the
    torchmetrics ones. Build one per split (each holds its own metric states)."""

    def __init__(self, objective: Objective, metrics: Mapping[str, Any], device: torch.device):
        self.objective = objective
        self.per_sample: dict[str, Any] = {}
        self.stateful: dict[str, Any] = {}
        if objective.has_accuracy and "accuracy" not in metrics:
            self.per_sample["accuracy"] = accuracy
        for name, metric in metrics.items():
            if is_stateful(metric):
                own = copy.deepcopy(metric)  # each split keeps its own states
                self.stateful[name] = own.to(device) if hasattr(own, "to") else own
            elif callable(metric):
                self.per_sample[name] = metric
            else:
                raise ConfigError(
                    f"metrics.{name}", f"{type(metric).__name__} is neither a metric function nor a torchmetrics Metric"
                )

    @property
    def columns(self) -> list[str]:
        return ["loss", *self.per_sample]

    @property
    def names(self) -> list[str]:
        return [*self.columns, *self.stateful]

    def direction(self, name: str) -> bool:
        return higher_is_better(name, self.stateful.get(name))

    def reset(self) -> None:
        for metric in self.stateful.values():
            metric.reset()

    def batch_sums_of(self, model: Any, inputs: Any, targets: Any) -> torch.Tensor:
        """The model's outputs for `inputs`, then `batch_sums` (evaluation)."""
        from distrain.data.structures import call_model

        outputs = call_model(model, inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = outputs.float()
        return self.batch_sums(outputs, targets)

    def batch_sums(self, outputs: Any, targets: Any) -> torch.Tensor:
        """[loss sum, per-sample metric sums...] of one batch (float64), and the stateful metrics updated."""
        objective = self.objective
        sums = [objective.losses(outputs, targets).double().sum()]
        # Probabilities only when some metric reads them (accuracy alone comes from the raw outputs).
        needs_preds = self.stateful or any(
            fn is not accuracy or not objective.has_accuracy for fn in self.per_sample.values()
        )
        preds, labels = objective.predictions(outputs, targets) if needs_preds else (None, None)
        for fn in self.per_sample.values():
            if fn is accuracy and objective.has_accuracy:
                values = objective.hits(outputs, targets)
            else:
                values = fn(preds, labels)
                if values.dim() == 0:  # a batch mean: counted for each of the batch's samples
                    values = values.double().expand(len(labels))
            sums.append(values.double().sum())
        for metric in self.stateful.values():
            metric.update(preds, labels)
        return torch.stack(sums)

    def compute_stateful(self) -> dict[str, float]:
        """Collective (torchmetrics gathers its states over the ranks)."""
        out = {}
        for name, metric in self.stateful.items():
            value = metric.compute()
            out[name] = float(value) if not isinstance(value, torch.Tensor) or value.numel() == 1 else value.tolist()
        return out
