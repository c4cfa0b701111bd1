"""What can a config name? One rule for built-ins and the user's code: a short registered name or an
import path `module:attribute`, plus `args` passed as keyword arguments.

    model:   {name: simple_classifier, args: {num_hidden: 4}}                 # built-in
    model:   {name: mypkg.models:SimpleClassifier, args: {num_hidden: 4}}     # the user's class
    distrain.register("model", "my_net", MyNet)                               # a short name of your own

A built-in is registered as an import path exactly like a user's (`"simple_classifier":
"distrain.models:simple_classifier"`), so every component is resolved, checked and called by the same code.
A component's options are its keyword arguments: typed ones are checked and converted like config keys
(`data.args.num_train: expected an integer`), unknown ones are refused with the nearest valid name, and
values the run already knows (the data's sizes, the seed) are passed to parameters that ask for them by
name (see `call`), so a built-in model and a user's model get `num_inputs` the same way.

This module does not import torch; built-ins are imported only when resolved (and torch.optim when an
optimizer or scheduler is named by a lowercase torch class name not written out here: see `builtins`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
import typing
from typing import Any, Callable, Mapping

from distrain.errors import ConfigError

KINDS = ("data", "model", "loss", "metric", "optim", "scheduler", "callback", "logger")

_BUILTINS: dict[str, dict[str, Any]] = {
    "data": {
        name: f"distrain.data.datasets:{name}"
        for name in ("xor", "synthetic", "breast_cancer", "wine", "digits", "diabetes", "csv")
    }
    | {
        name: f"distrain.data.images:{name}"
        for name in ("mnist", "fashion_mnist", "cifar10", "image_folder", "csv_images")
    }
    | {
        "shards": "distrain.data.shard_files:shards",
        "webdataset": "distrain.data.webdataset:webdataset",
        "huggingface": "distrain.data.hf:huggingface",
    },
    "model": {
        name: f"distrain.models:{name}"
        for name in (
            "simple_classifier",
            "logistic_regression",
            "linear",
            "mlp",
            "mnist_cnn",
            "cifar_lenet",
            "torchvision",
        )
    },
    # Losses and optimizers are torch's own classes under short names: the same path a user's takes.
    "loss": {
        "cross_entropy": "torch.nn:CrossEntropyLoss",
        "bce_with_logits": "torch.nn:BCEWithLogitsLoss",
        "bce": "torch.nn:BCELoss",
        "nll": "torch.nn:NLLLoss",
        "mse": "torch.nn:MSELoss",
        "l1": "torch.nn:L1Loss",
        "huber": "torch.nn:HuberLoss",
        "smooth_l1": "torch.nn:SmoothL1Loss",
    },
    "metric": {
        "accuracy": "distrain.loop.metrics:accuracy",
        "mae": "distrain.loop.metrics:mean_absolute_error",
        "mse": "distrain.loop.metrics:mean_squared_error",
        "r2": "torchmetrics.regression:R2Score",
    },
    # Every torch.optim optimizer is also known by its lowercase class name (adadelta, nadam, ...: see
    # `builtins`); these common ones are written out so that a config naming them loads without torch.
    "optim": {
        "sgd": "torch.optim:SGD",
        "adam": "torch.optim:Adam",
        "adamw": "torch.optim:AdamW",
        "rmsprop": "torch.optim:RMSprop",
        "adagrad": "torch.optim:Adagrad",
    },
    # Every torch scheduler by its lowercase class name (steplr, onecyclelr, ...: see `builtins`) or import
    # path; these friendly names too (constant, step and cosine are the built-in schedules of schedule.*,
    # not callables).
    "scheduler": {
        "one_cycle": "torch.optim.lr_scheduler:OneCycleLR",
        "reduce_on_plateau": "torch.optim.lr_scheduler:ReduceLROnPlateau",
        "cosine_annealing": "torch.optim.lr_scheduler:CosineAnnealingLR",
        "exponential": "torch.optim.lr_scheduler:ExponentialLR",
    },
    # Built-in callbacks, made like a user's (callbacks/base.py).
    "callback": {"ema": "distrain.callbacks.ema:EMA"},
    "logger": {
        "wandb": "distrain.reporting.wandb_run:wandb_logger",
        "tensorboard": "distrain.reporting.tensorboard:TensorBoardLogger",
        "csv": "distrain.reporting.csv_log:CSVLogger",
    },
}
_USER: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, target: Any) -> None:
    """Give `target` (a callable, or an import path "module:attribute") a short name usable in configs."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if ":" in name:
        raise ValueError(f"a registered name cannot contain ':' (that marks an import path): {name!r}")
    _USER[kind][name] = target


def names(kind: str) -> list[str]:
    return sorted(builtins(kind) | _USER[kind])


def builtins(kind: str) -> dict[str, Any]:
    """The built-in names of a kind and what they stand for: the table above, and for optimizers and
    schedulers every class torch exports, by its lowercase class name (`adadelta` is torch.optim:Adadelta,
    `steplr` is torch.optim.lr_scheduler:StepLR). Read from torch itself, so a torch release's new ones come
    with it; imports torch for those two kinds only."""
    return _torch_classes(kind) | _BUILTINS[kind]  # a written-out name wins


@functools.cache
def _torch_classes(kind: str) -> dict[str, str]:
    if kind == "optim":
        import torch.optim as module

        bases: tuple[type, ...] = (module.Optimizer,)
    elif kind == "scheduler":
        import torch.optim.lr_scheduler as module

        bases = (module.LRScheduler, module.ReduceLROnPlateau)
    else:
        return {}
    found = {}
    for attr in module.__all__:  # the public ones: not the bases' private aliases (_LRScheduler)
        obj = getattr(module, attr, None)
        if inspect.isclass(obj) and issubclass(obj, bases) and obj not in bases[:1]:
            found[attr.lower()] = f"{module.__name__}:{attr}"
    return found


def is_import_path(name: str) -> bool:
    return ":" in name


def check_name(kind: str, name: str, key: str) -> None:
    """Refuse an unknown short name before anything is imported (with the nearest valid one)."""
    if is_import_path(name) or name in _BUILTINS[kind] or name in _USER[kind]:
        return  # torch not imported: the config loads without it
    if name in _torch_classes(kind):
        return
    close = difflib.get_close_matches(name, names(kind), n=1, cutoff=0.5)
    hint = (
        f"did you mean '{close[0]}'? " if close else ""
    ) + f"built-in names: {', '.join(names(kind))}; or an import path module:attribute"
    raise ConfigError(key, f"unknown {kind} {name!r}", hint)


def resolve(kind: str, name: str, key: str) -> Any:
    """The object a config name stands for. Import failures are ConfigErrors naming `key`."""
    check_name(kind, name, key)
    target = _USER[kind][name] if name in _USER[kind] else builtins(kind).get(name, name)
    return import_path(target, key) if isinstance(target, str) else target


def import_path(path: str, key: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(key, f"{path!r} is not an import path", "write module:attribute, e.g. mypkg.models:Net")
    try:
        obj: Any = _import(module_name)
    except ImportError as exc:
        raise ConfigError(
            key,
            f"cannot import module {module_name!r}: {exc}",
            "check the spelling, and that the module is importable (installed, or its folder "
            "on PYTHONPATH / the current directory)",
        ) from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=1, cutoff=0.6)
            raise ConfigError(
                key,
                f"module {module_name!r} has no attribute {attribute!r}",
                f"did you mean '{close[0]}'?" if close else None,
            ) from None
    return obj


def _import(module_name: str) -> Any:
    """import_module, also from the current directory: `python -m` has it on sys.path, the installed
    `distrain` command does not, and a config naming mypkg.models:Net means the mypkg next to it."""
    import os
    import sys

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if cwd in sys.path or (exc.name and not module_name.startswith(exc.name)):
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def describe(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def call(obj: Callable, args: Mapping[str, Any], key: str, known: Mapping[str, Any] = {}) -> Any:
    """Call `obj(**args)` after checking `args` against its signature.

    - an argument the callable does not take: ConfigError naming `<key>.<arg>` (nearest name suggested);
    - an annotated argument is converted and checked like a config value (`expected an integer`);
    - a parameter missing from `args` whose name is in `known` (values the run knows: num_inputs,
      num_outputs, seed, ...) receives it; `args` always win;
    - a required parameter still missing: ConfigError naming `<key>.<parameter>`.
    """
    from distrain.config.coerce import can_coerce, coerce

    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have no signature: pass args as they are
        return obj(**args)
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # unresolvable annotations: no conversion, the callable checks its own arguments
        hints = {}
    kwargs: dict[str, Any] = {}
    for name, value in args.items():
        if name not in named and not takes_any:
            close = difflib.get_close_matches(name, list(named), n=1, cutoff=0.6)
            hint = (
                f"did you mean '{key}.{close[0]}'?"
                if close
                else f"{describe(obj)} takes: {', '.join(named) or 'no arguments'}"
            )
            raise ConfigError(f"{key}.{name}", f"{describe(obj)} takes no argument {name!r}", hint)
        if name in hints and can_coerce(hints[name]):
            value = coerce(value, hints[name], f"{key}.{name}")
        elif name in named and _is_number(named[name].default) and isinstance(value, str) and _EXPONENT.match(value):
            # YAML 1.1 reads `1e-4` (no dot) as a string; with no usable annotation (torch's optimizers are
            # called through functools.partial, or annotate float | Tensor) a numeric default says a number.
            value = float(value)
        kwargs[name] = value
    for name, p in named.items():
        if name in kwargs:
            continue
        if name in known and known[name] is not None:
            kwargs[name] = known[name]
        elif p.default is p.empty:
            raise ConfigError(
                f"{key}.{name}",
                f"{describe(obj)} needs argument {name!r} and the run does not know it",
                f"set {key}.{name} in the config",
            )
    return obj(**kwargs)
