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
import threading
import uuid
from pathlib import Path
from typing import Any

from distrain.atomic import atomic_write_bytes
from distrain.config.schema import WandbConfig
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
        raise UserError(
            f"wandb.mode is '{cfg.mode}' but the wandb package is not installed",
            "pip install wandb (a dependency of distrain: reinstall it), or set wandb.mode=disabled",
        )
    if cfg.mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")
    return cfg.mode


class WandbSink:
    """Rank 0's W&B run. Create only on global rank 0.

    W&B's start-up (import and `wandb.init`, about 4.5 s here even offline) runs in a background thread,
    so training does not wait for it: values logged before the run exists are queued and sent, in order,
    as soon as it does (at the latest in `finish`). `last_step` in wandb.json counts only what reached
    the run, so a kill before W&B started loses nothing on resume: those steps are logged again.
    """

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any]):
        self.mode = resolve_mode(cfg)
        self.state_path = run_dir / "wandb.json"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.run_id = state.get("id") or uuid.uuid4().hex[:12]
        self.last_step = state.get("last_step", -1)
        self.run: Any = None
        self._error: BaseException | None = None
        self._pending: list[tuple[dict[str, float], int]] = []
        self._summary: dict[str, float] = {}
        self._save_state()  # the id first: a restart continues this run even if W&B never started
        options = dict(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or run_dir.name,
            group=cfg.group,
            tags=cfg.tags or None,
            config=config,
            dir=str(run_dir),
            id=self.run_id,
            resume="allow",
            mode=self.mode,
        )
        self._thread = threading.Thread(target=self._start, args=(options,), name="distrain-wandb", daemon=True)
        self._thread.start()

    def _start(self, options: dict[str, Any]) -> None:
        try:
            import wandb

            self.run = wandb.init(**options)
        except BaseException as exc:  # reported on the main thread (training goes on without W&B)
            self._error = exc
            return
        log.info(
            "W&B run %s (%s)%s",
            self.run_id,
            self.mode,
            f", continuing after step {self.last_step}" if self.last_step >= 0 else "",
        )

    def _save_state(self) -> None:
        atomic_write_bytes(self.state_path, json.dumps({"id": self.run_id, "last_step": self.last_step}).encode())

    def _ready(self) -> bool:
        if self._error is not None:
            log.warning("W&B did not start, training goes on without it: %s", self._error)
            self._error, self._pending = None, []
            self._thread = None
        return self.run is not None

    def log(self, values: dict[str, float], step: int) -> None:
        if step < self.last_step:
            return  # logged before the interruption this run resumed from
        self._pending.append((values, step))
        if self._ready():
            self._flush()

    def _flush(self) -> None:
        for values, step in self._pending:
            if step < self.last_step:
                continue
            self.run.log(values, step=step)
            self.last_step = max(self.last_step, step)
        if self._pending:
            self._save_state()
        self._pending = []
        for key, value in self._summary.items():
            self.run.summary[key] = value

    def summarize(self, values: dict[str, float]) -> None:
        self._summary.update(values)
        if self._ready():
            self._flush()

    def finish(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._ready():
            self._flush()
            self.run.finish()
