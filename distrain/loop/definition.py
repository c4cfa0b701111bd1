"""What defines a run beyond its config: what distrain.fit was handed (or the config built), recorded in
<run.dir>/definition.json and in every checkpoint, and compared on resume.

    definition = RunDefinition.of(parts, optimizer, scheduler, given)   # every rank, before any resume
    definition.check_resumable(payload.get("definition"), path)         # a resume that differs: refused

    {"model": {"class": "mypkg.models.Net", "parameters": {"linear1.weight": [4, 2], ...}},
     "optimizer": {"class": "torch.optim.sgd.SGD", "hyperparameters": {"lr": 0.1, "momentum": 0, ...},
                   "groups": [{"parameters": 4}]},
     "loss": "bce_with_logits", "data": {"train": 2500, "test": 500},
     "step": "distrain", "scheduler": "torch.optim.lr_scheduler.LambdaLR", "callbacks": [],
     "metrics": ["f1"]}

The config check (loop/state.py) sees only the config; a model, optimizer, loss or data set handed to fit
is seen here. Refused on resume, like the config keys that change what the saved state means: another
model class (by its name: __main__.Net and train.Net are one) or parameter names and shapes, another
optimizer class or hyperparameter, another loss, other data set sizes, another step or scheduler.
Allowed (logged): other metrics and callbacks, as other metrics in the config are. A hyperparameter
present on one side only (a torch release added one) is not a difference. An error names the argument
when fit was given the object (`fit(optimizer=...)`), else the config key that built it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from distrain.errors import ArgumentError, ConfigError

if TYPE_CHECKING:
    from distrain.loop.components import Given, Parts

log = logging.getLogger("distrain")

# The parts whose change makes the saved state meaningless or the continuation silently different.
REFUSED = ("model", "optimizer", "loss", "data", "shards", "epoch_steps", "step", "scheduler")
# Config keys that build each part when fit is not given it (what an error names then).
_CONFIG_KEY = {
    "model": "model",
    "optimizer": "optim",
    "loss": "loss.name",
    "data": "data",
    "shards": "data",
    "epoch_steps": "trainer.steps_per_epoch",
    "step": "step",
    "scheduler": "schedule",
}
_WAYS_OUT = (
    "to start anew: checkpoint.resume=never or a new run.dir; to start a new run from these weights: "
    "checkpoint.resume=PATH checkpoint.load=weights"
)


@dataclass
class RunDefinition:
    values: dict[str, Any]  # what is written (JSON)
    given: dict[str, str] = field(default_factory=dict)  # part -> the fit argument that handed it

    @staticmethod
    def of(
        parts: Parts, optimizer: torch.optim.Optimizer, scheduler: Any, given: Given, callbacks: list[str] = ()
    ) -> RunDefinition:
        """Read from the live objects before a resume loads any state into them (an optimizer's
        load_state_dict replaces its hyperparameters with the saved ones)."""
        from distrain.strategies.fsdp import model_class

        model = parts.model
        data = parts.data
        values = {
            "model": {
                "class": _qualified(model_class(model)),
                "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
            },
            "optimizer": _describe_optimizer(optimizer),
            "loss": parts.objective.name,
            "data": {
                split: len(dataset) if hasattr(dataset, "__len__") else None
                for split, dataset in (("train", data.train), ("val", data.val), ("test", data.test))
                if dataset is not None
            },
            # A sharded stream's order follows from its shards' sizes: a resume over other shards would
            # continue another order.
            **(
                {"shards": list(parts.stream.sizes)}
                if parts.stream is not None and parts.stream.sizes is not None
                else {}
            ),
            # A stream without a length: its position is counted in steps of this many per epoch
            # (trainer.steps_per_epoch, or trainer.max_steps when that makes the run one epoch).
            **(
                {"epoch_steps": parts.stream.steps_per_epoch}
                if parts.stream is not None and parts.stream.shards is None and parts.stream.pass_length is None
                else {}
            ),
            "step": _function_name(given.step) if given.step is not None else "distrain",
            "scheduler": _qualified(type(scheduler)),
            "callbacks": list(callbacks),
            "metrics": sorted(parts.metric_objects),
        }
        named = {
            "model": given.model,
            "optimizer": given.optimizer,
            "loss": given.loss,
            "data": given.train_data,
            "shards": given.train_data,
            "scheduler": given.scheduler,
            "step": given.step,
        }
        arguments = {part: "train_data" if part == "data" else part for part, obj in named.items() if obj is not None}
        return RunDefinition(_plain(values), arguments)

    def to_json(self) -> bytes:
        return (json.dumps(self.values, indent=1) + "\n").encode()

    def check_resumable(self, saved: dict[str, Any] | None, path: str) -> None:
        """Refuse (exit 2) a resume whose definition differs in a REFUSED part, naming it and both values;
        log the other differences. A checkpoint without a definition (written before there was one) is
        not compared."""
        if not saved:
            return
        for part in sorted(set(saved) | set(self.values)):
            differences = _differences(saved.get(part), self.values.get(part), part)
            if not differences:
                continue
            listed = "; ".join(f"{what}: {old} in the checkpoint, {new} now" for what, old, new in differences)
            if part not in REFUSED:
                log.info("resuming with a changed %s: %s", part, listed)
                continue
            problem = f"differs from the run being resumed ({path}): {listed}"
            if part in self.given:
                raise ArgumentError(self.given[part], problem, _WAYS_OUT)
            raise ConfigError(_CONFIG_KEY[part], problem, _WAYS_OUT)


def _describe_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    several = getattr(optimizer, "optimizers", None)
    if isinstance(several, dict):  # loop/several.py's OptimizerSet: each by name
        return {name: _describe_optimizer(opt) for name, opt in several.items()}
    defaults = dict(optimizer.defaults)
    groups = []
    for group in optimizer.param_groups:
        # What a group sets apart from the defaults (a scheduler's initial_lr is its own business).
        own = {k: v for k, v in group.items() if k not in ("params", "initial_lr") and defaults.get(k, k) != v}
        groups.append({"parameters": len(group["params"]), **own})
    return {"class": _qualified(type(optimizer)), "hyperparameters": defaults, "groups": groups}


def _function_name(fn: Any) -> str:
    """A step function by its module and name (a lambda: <lambda>; an object: its class)."""
    name = getattr(fn, "__qualname__", None)
    if name is None:
        return _qualified(type(fn))
    return f"{getattr(fn, '__module__', '?')}.{name}"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """JSON-able: tensors as numbers, tuples as lists, anything else unknown as its repr."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(what, old, new) for each leaf that differs; a key on one side only of a dict of hyperparameters
    is no difference (a newer torch adds defaults), elsewhere it is."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        lenient = prefix.endswith("hyperparameters")
        for key in list(old) + [k for k in new if k not in old]:
            if lenient and (key not in old or key not in new):
                continue
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if (prefix.endswith(".class") or prefix in ("step", "scheduler")) and isinstance(old, str) and isinstance(new, str):
        # The class (or step function) by its own name: a script's class is __main__.Net run as a script and train.Net
        # imported from it, the same class.
        old_name, new_name = old.rpartition(".")[2], new.rpartition(".")[2]
        return [] if old_name == new_name else [(prefix, json.dumps(old), json.dumps(new))]
    if old != new:
        return [(prefix or "value", json.dumps(old), json.dumps(new))]
    return []
