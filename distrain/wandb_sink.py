"""Weights & Biases: exactly one run per job, made by global rank 0, continued after restarts.

Only global rank 0 ever imports wandb or creates a run (the decision is made from the process group's
rank at run time, never at import, so custom launchers cannot produce one run per rank). The run id is
kept in <run.dir>/wandb.json: a resumed, restarted or requeued job continues the same W&B run. Every
value is logged against the global optimizer step. After a resume, steps up to the last one already
logged are skipped: an exact resume recomputes the same values, which W&B already holds, and W&B would
refuse them as non-monotonic anyway.

Modes (wandb.mode): auto is online when an API key is configured (WANDB_API_KEY, or `wandb login`),
else offline (files in <run.dir>/wandb, upload later with `wandb sync`); off if wandb is not installed;
disabled turns W&B off.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import uuid
from pathlib import Path
from typing import Any

from distrain.checkpoint import atomic_write_bytes
from distrain.config import WandbConfig
from distrain.errors import UserError

log = logging.getLogger("distrain")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(cfg: WandbConfig) -> str:
    """online, offline or disabled, for this machine."""
    if cfg.mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return "disabled"
    try:
        import importlib.util

        installed = importlib.util.find_spec("wandb") is not None
    except ValueError:
        installed = False
    if not installed:
        if cfg.mode == "auto":
            return "disabled"
        raise UserError(f"wandb.mode is '{cfg.mode}' but the wandb package is not installed",
                        "pip install wandb (or distrain[wandb]), or set wandb.mode=disabled")
    if cfg.mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")
    return cfg.mode


class WandbSink:
    """Rank 0's W&B run. Create only on global rank 0."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.mode = resolve_mode(cfg)
        self.state_path = run_dir / "wandb.json"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.run_id = state.get("id") or uuid.uuid4().hex[:12]
        self.last_step = state.get("last_step", -1)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.name,
                              group=cfg.group, tags=cfg.tags or None, config=config, dir=str(run_dir),
                              id=self.run_id, resume="allow", mode=self.mode)
        self._save_state()
        log.info("W&B run %s (%s)%s", self.run_id, self.mode,
                 f", continuing after step {self.last_step}" if self.last_step >= 0 else "")

    def _save_state(self) -> None:
        atomic_write_bytes(self.state_path, json.dumps({"id": self.run_id, "last_step": self.last_step}).encode())

    def log(self, values: dict[str, float], step: int) -> None:
        if step < self.last_step:
            return  # logged before the interruption this run resumed from
        self.run.log(values, step=step)
        if step > self.last_step:
            self.last_step = step
            self._save_state()

    def summarize(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self) -> None:
        self.run.finish()
