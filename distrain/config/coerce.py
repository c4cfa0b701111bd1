"""Config values checked against their annotations: `coerce(value, annotation, dotted_key)` converts YAML
values (lists to tuples, ints to floats, `precision: 32` to "32") or raises ConfigError naming the key,
with the nearest valid key or value for a typo. The schema (distrain.config.schema) and the components'
`args` (distrain.config.registry) are checked by the same code. No torch import."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from distrain.errors import ConfigError

# Keys people write from other tools' habits, and what they mean here (a closer spelling would mislead:
# batch_size is nearest to eval_batch_size, but means the training batch).
_MEANT = {
    "data.batch_size": "global_batch_size",
    "trainer.max_epochs": "epochs",
    "optim.learning_rate": "lr",
    "optim.optimizer": "name",
    "model.kwargs": "args",
    "data.kwargs": "args",
}


def build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = (
                [_MEANT[dotted]]
                if dotted in _MEANT
                else difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            )
            valid = ", ".join(f"{prefix}.{k}" if prefix else k for k in fields)
            hint = (
                f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else f"valid keys here: {valid}"
            )
            raise ConfigError(dotted, "unknown key", hint)
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(dotted, "required key is missing", f"set it in the YAML file or pass {dotted}=...")
            continue
        try:
            kwargs[name] = coerce(raw[name], hints[name], dotted)
        except ConfigError as exc:
            # A field may say what its value means (metadata "means"), for a message better than the type's.
            if "means" not in f.metadata or exc.key != dotted:
                raise
            raise ConfigError(dotted, f"expected {f.metadata['means']}, got {raw[name]!r}", exc.hint) from None
    return cls(**kwargs)


def can_coerce(tp: Any) -> bool:
    """Whether `coerce` knows this annotation (used to check the `args` of components)."""
    origin = typing.get_origin(tp)
    if tp in (bool, int, float, str, Any, type(None)) or dataclasses.is_dataclass(tp) or origin is Literal:
        return True
    if origin in (Union, types.UnionType, list, dict, tuple):
        return all(a is Ellipsis or can_coerce(a) for a in typing.get_args(tp))
    return False


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (YAML lists to tuples, ints to floats);
    raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], key)
        for option in inner:  # the first that accepts it
            try:
                return coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(key, f"expected {' or '.join(getattr(a, '__name__', str(a)) for a in inner)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        if not isinstance(value, bool) and str(value) in choices:  # YAML reads `precision: 32` as an int
            return str(value)
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}; got {value!r}", hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        inner = typing.get_args(tp)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return tuple(coerce(v, inner[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(inner) != len(value):
            raise ConfigError(key, f"expected a list of {len(inner)} values, got {value!r}")
        return tuple(coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping of keys, got {value!r}")
        _, inner = typing.get_args(tp)
        return {str(k): coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept what Python reads as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(key, f"expected null, got {value!r}")
    raise TypeError(f"distrain bug: no coercion for {tp} at {key}")


def check(ok: bool, key: str, problem: str, hint: str | None = None) -> None:
    """Raise ConfigError(key, problem, hint) unless `ok`: the one-line form of every section's checks."""
    if not ok:
        raise ConfigError(key, problem, hint)


def check_monitor(monitor: str, key: str) -> None:
    """`<split>_<metric>` with split train or val. The test split is reported, never used to choose a
    model: selecting on it makes the reported test figure optimistic."""
    split, _, metric = monitor.partition("_")
    check(
        split in ("train", "val", "test") and bool(metric),
        key,
        f"must look like val_<metric> or train_<metric> (e.g. val_loss, val_accuracy, val_f1), got {monitor!r}",
    )
    check(
        split != "test",
        key,
        f"is {monitor!r}: the test split is reported, never used for model selection",
        f"monitor the validation split instead (val_{metric}); give the run one with data.val_fraction=0.1 "
        "or val_data= in distrain.fit",
    )
