"""Callbacks: your code at the loop's moments, with every guarantee kept.

    distrain.fit(cfg, ..., callbacks=[MyCallback(), EMA(decay=0.999)])
    callbacks: [{name: ema, args: {decay: 0.999}}, {name: "mypkg.cb:Probe", args: {every: 10}}]   # YAML

A callback is any object with some of these methods (each optional), called on every rank (the
`Callback` Protocol below spells them out for type checkers; subclassing it is optional, and a hook it
leaves alone counts as absent):

    on_train_start(run)           after a resume, before the first step
    on_epoch_start(run)           before the epoch's first step (also a resumed, half-done epoch)
    on_step_end(run)              after each optimizer step (also one the non-finite guard skipped)
    on_epoch_end(run, metrics)    after the epoch's evaluation, before its record is written; metrics:
                                  {"train_loss": ..., "val_loss": ..., "test_accuracy": ...}
    on_save(run, path)            after a checkpoint is written (path: the .pt file or sharded folder)
    on_train_end(run, result)     after training ended normally (result: the FitResult)
    on_exception(run, exc)        training raised (a signal's stop included); the exception propagates

`run` (a `Run`) carries epoch (in progress, 0-based), global_step, model (unwrapped), optimizer, rank,
world_size, run_dir, and `run.log(name=value, ...)`: scalars that go to every logger (W&B, TensorBoard,
CSV) and the console at the current global step, and into the epoch's train record of metrics.jsonl (and
so the plots): the last value logged per name during the epoch. Only global rank 0's values are written:
call run.log on every rank with values that are the same everywhere (reduce first what is not), or on
rank 0 alone. `run.evaluate()` evaluates the val and test splits now (collective: call it on every rank).

A callback with `state_dict()` and `load_state_dict(state)` is checkpointed (every rank calls
state_dict at every save; rank 0's result is written) and resumed, keyed by its position and class.
Callbacks are part of the run's definition by class name (a change is logged, not refused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from distrain.errors import ArgumentError, ConfigError

if TYPE_CHECKING:
    from distrain.loop.result import FitResult

log = logging.getLogger("distrain")

HOOKS = (
    "on_train_start",
    "on_epoch_start",
    "on_step_end",
    "on_epoch_end",
    "on_save",
    "on_train_end",
    "on_exception",
)


class Callback(Protocol):
    """The hooks a callback may have (`distrain.fit(..., callbacks=[...])`), each optional and called on
    every rank with the `Run`:

        on_train_start(run)           after a resume, before the first step
        on_epoch_start(run)           before the epoch's first step (also a resumed, half-done epoch)
        on_step_end(run)              after each optimizer step (also one the non-finite guard skipped)
        on_epoch_end(run, metrics)    after the epoch's evaluation, before its record is written;
                                      metrics: {"train_loss": ..., "val_loss": ..., "test_accuracy": ...}
        on_save(run, path)            after a checkpoint is written (the .pt file or sharded folder)
        on_train_end(run, result)     after training ended normally (result: the FitResult)
        on_exception(run, exc)        training raised (a signal's stop included); the exception propagates

    With `state_dict()` and `load_state_dict(state)` too, a callback is checkpointed and resumed.
    Documentation and a typing aid: any object with some of the hooks is a callback; a class may also
    subclass this one and write only the hooks it needs (those it does not write are not called).
    """

    def on_train_start(self, run: Run) -> None: ...

    def on_epoch_start(self, run: Run) -> None: ...

    def on_step_end(self, run: Run) -> None: ...

    def on_epoch_end(self, run: Run, metrics: dict[str, float]) -> None: ...

    def on_save(self, run: Run, path: Path) -> None: ...

    def on_train_end(self, run: Run, result: FitResult) -> None: ...

    def on_exception(self, run: Run, exc: BaseException) -> None: ...


def has_hook(obj: Any, hook: str) -> bool:
    """Whether `obj` has the hook, one of its own: the `Callback` Protocol's empty ones (inherited by a
    subclass that does not write them) do not count, so the loop pays nothing for them."""
    method = getattr(obj, hook, None)
    return callable(method) and getattr(method, "__func__", None) is not getattr(Callback, hook)


@dataclass
class Run:
    """What a callback sees of the run, its hooks' first argument (made by the loop, which keeps epoch and
    global_step current): epoch (in progress, 0-based), global_step, model (unwrapped), optimizer, rank,
    world_size, run_dir; `run.log(name=value, ...)` logs scalars, `run.evaluate()` evaluates now."""

    model: nn.Module
    optimizer: Any
    rank: int
    world_size: int
    run_dir: Path
    epoch: int = 0
    global_step: int = 0
    logged: dict[str, float] = field(default_factory=dict)  # this epoch's run.log values, last per name
    reporter: Any = field(default=None, repr=False)  # where run.log's values go (the run's Reporter)
    evaluator: Any = field(default=None, repr=False)  # () -> {split: EpochMetrics}: what run.evaluate runs

    def log(self, **values: Any) -> None:
        """Scalars at the current global step: every logger, the console, and the epoch's train record."""
        scalars = {}
        for name, value in values.items():
            try:
                scalars[name] = float(value)
            except (TypeError, ValueError):
                problem = f"run.log({name}=...) got a {type(value).__name__}, not a number"
                raise ArgumentError("callbacks", problem) from None
        self.logged.update(scalars)
        if self.reporter is not None:
            self.reporter.log_scalars(self.global_step, scalars)
        if self.rank == 0:
            log.info("step %d | %s", self.global_step, " | ".join(f"{k} {v:.4g}" for k, v in scalars.items()))

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """The val and test splits' figures with the model's current weights. Collective."""
        return {split: dict(m.values) for split, m in self.evaluator().items()}

    def take_logged(self) -> dict[str, float]:
        taken, self.logged = self.logged, {}
        return taken


class Callbacks:
    """The run's callbacks, called in order."""

    def __init__(self, callbacks: list[Any]):
        self.items = list(callbacks)
        # Per hook, the bound methods that exist: the loop pays nothing for a hook nobody has.
        self.bound = {hook: [getattr(c, hook) for c in self.items if has_hook(c, hook)] for hook in HOOKS}

    def __bool__(self) -> bool:
        return bool(self.items)

    def has(self, hook: str) -> bool:
        return bool(self.bound[hook])

    def call(self, hook: str, *args: Any) -> None:
        for method in self.bound[hook]:
            method(*args)

    def names(self) -> list[str]:
        return [f"{type(c).__module__}.{type(c).__qualname__}" for c in self.items]

    def _keyed(self) -> dict[str, Any]:
        return {f"{i}:{type(c).__qualname__}": c for i, c in enumerate(self.items) if _stateful(c)}

    def state_dict(self) -> dict[str, Any]:
        return {key: c.state_dict() for key, c in self._keyed().items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for key, c in self._keyed().items():
            if state and key in state:
                c.load_state_dict(state[key])
            else:
                log.info("callback %s has no state in the checkpoint: it starts afresh", key)


def _stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def build_callbacks(configs: list[Any], given: list[Any] | None) -> Callbacks:
    """The config's callbacks (by short name or import path, with args), then fit's."""
    from distrain.config.registry import call, resolve

    made = []
    for index, c in enumerate(configs):
        key = f"callbacks[{index}]"
        made.append(call(resolve("callback", c.name, f"{key}.name"), c.args, f"{key}.args"))
    for obj in given or []:
        if isinstance(obj, type):
            raise ArgumentError("callbacks", f"holds the class {obj.__name__}, not an object", f"give {obj.__name__}()")
        if not any(has_hook(obj, hook) for hook in HOOKS):
            raise ArgumentError("callbacks", f"a {type(obj).__name__} has none of the hooks {', '.join(HOOKS)}")
        made.append(obj)
    for obj in made[: len(configs)]:
        if not any(has_hook(obj, hook) for hook in HOOKS):
            raise ConfigError("callbacks", f"a {type(obj).__name__} has none of the hooks {', '.join(HOOKS)}")
    return Callbacks(made)
