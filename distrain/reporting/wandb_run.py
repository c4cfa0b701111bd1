"""Weights & Biases: exactly one run per job, made by global rank 0, continued after restarts.

    log:
      loggers: [wandb]          # the default; on when W&B is set up, else off with one line saying how
    wandb:
      mode: auto                # auto | online | offline | disabled

Only global rank 0 ever imports wandb or creates a run (the decision is made from the process group's
rank at run time, never at import, so custom launchers cannot produce one run per rank). The run id is
kept in <run.dir>/wandb.json: a resumed, restarted or requeued job continues the same W&B run. Every
value is logged against the global optimizer step. After a resume, steps up to the last one already
logged are skipped: an exact resume recomputes the same values, which W&B already holds, and W&B would
refuse them as non-monotonic anyway.

Modes (wandb.mode), as the ecosystem does it (W&B's own WANDB_MODE; Lightning's and Accelerate's
trackers are off until asked for): auto is what WANDB_MODE says (online, offline), else online when an
API key is configured (WANDB_API_KEY, or `wandb login`), else off, with one line saying how to turn it
on; online and offline as in wandb.init (offline: files in <run.dir>/wandb, upload later with
`wandb sync`); disabled turns W&B off, as does leaving wandb out of log.loggers. Off costs nothing; an
offline run's start and finish cost a one-epoch XOR run 2.6 s here and 33 lines of W&B's output.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from distrain.atomic import atomic_write_bytes
from distrain.errors import UserError
from distrain.reporting.options import WandbConfig

if TYPE_CHECKING:
    from distrain.config.schema import Config

log = logging.getLogger("distrain")


def _has_api_key(environ: Mapping[str, str]) -> bool:
    if environ.get("WANDB_API_KEY"):
        return True
    # `wandb login` writes the key into the netrc file (NETRC, else ~/.netrc), where wandb reads it.
    path = environ.get("NETRC") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(cfg: WandbConfig, environ: Mapping[str, str] = os.environ) -> tuple[str, str | None]:
    """online, offline or disabled for this machine, and when auto leaves W&B off, the line that says how
    to turn it on."""
    env_mode = environ.get("WANDB_MODE")
    if cfg.mode == "disabled" or env_mode == "disabled":
        return "disabled", None
    try:
        import importlib.util

        installed = importlib.util.find_spec("wandb") is not None
    except ValueError:
        installed = False
    if not installed:
        if cfg.mode == "auto":
            return "disabled", "W&B is off: the wandb package is not installed (pip install wandb)"
        raise UserError(
            f"wandb.mode is '{cfg.mode}' but the wandb package is not installed",
            "pip install wandb (a dependency of distrain: reinstall it), or set wandb.mode=disabled",
        )
    if cfg.mode != "auto":
        return cfg.mode, None
    if env_mode in ("online", "offline"):
        return env_mode, None
    if _has_api_key(environ):
        return "online", None
    return "disabled", (
        "W&B is off: no API key is configured (`wandb login` or WANDB_API_KEY turns it on; wandb.mode=offline "
        "logs to <run.dir>/wandb without one; wandb.mode=disabled drops this line)"
    )


def wandb_logger(cfg: Config, run_dir: Path) -> WandbSink | None:
    """The job's W&B run (global rank 0), or None when wandb.mode leaves W&B off (said in one line)."""
    mode, note = resolve_mode(cfg.wandb)
    if note:
        log.info("%s", note)
    if mode == "disabled":
        return None
    return WandbSink(cfg.wandb, run_dir, cfg.to_dict(), mode=mode)


class WandbSink:
    """Rank 0's W&B run. Create only on global rank 0.

    W&B's start-up (import and `wandb.init`, about 4.5 s here even offline) runs in a background thread,
    so training does not wait for it: values logged before the run exists are queued and sent, in order,
    as soon as it does (at the latest in `finish`). `last_step` in wandb.json counts only what reached
    the run, so a kill before W&B started loses nothing on resume: those steps are logged again.
    """

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any], *, mode: str):
        self.mode = mode
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

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
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

    def log_summary(self, values: dict[str, float]) -> None:
        self._summary.update(values)
        if self._ready():
            self._flush()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._ready():
            self._flush()
            self.run.finish()
