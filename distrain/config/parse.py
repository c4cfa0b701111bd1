"""A config from a YAML file plus `dotted.key=value` overrides, validated into the schema's `Config`.

    cfg = load_config("configs/xor.yaml", ["optim.lr=0.05", "trainer.epochs=10"])

Overrides are parsed as YAML values (`1e-3`, `[8, 8]`, `null`). The resolved config is written into the
run directory as YAML (`dump_config`) and loads back to the same `Config`. No torch import, so
`distrain --help` and config errors stay fast.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from distrain.config.coerce import build
from distrain.config.schema import Config
from distrain.errors import ConfigError


def load_config(path: str | Path | dict, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or take a dict of its contents), apply `dotted.key=value` overrides, and
    validate it into a `Config`."""
    if isinstance(path, dict):
        raw = copy.deepcopy(path)
        apply_overrides(raw, list(overrides))
        return from_dict(raw)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            "<config file>",
            f"{path} does not exist or is not a file",
            "pass the path of a YAML config, e.g. configs/xor.yaml",
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("<config file>", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("<config file>", f"{path} must hold a mapping of keys, not {type(raw).__name__}")
    apply_overrides(raw, overrides)
    return from_dict(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Set each `a.b.c=value` in the nested dict; values are parsed as YAML (`1e-3`, `[8, 8]`, `null`)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(item, "an override must look like dotted.key=value", "e.g. optim.lr=0.05")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: depth + 1]), "is a value, not a section, so it has no sub-keys")
            node = child
        node[parts[-1]] = value


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a `Config` (raises ConfigError naming the dotted key)."""
    return build(Config, raw, "")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, as written to <run.dir>/config.yaml (it loads back to the same Config)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
