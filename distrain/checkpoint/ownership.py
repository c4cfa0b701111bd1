"""Who owns a run directory: one run at a time, held by global rank 0 for the whole run.

    with own_run_dir(run_dir, is_main) as owner:   # every rank; raises RunDirInUse on every rank if held
        ...
        owner.stopping()     # (any thread) the holder says it is on its way out: a rerun waits for it

Rank 0 takes an exclusive `flock` on `<run.dir>/.lock` and writes who holds it (host, PID, start time)
into the file. The kernel drops the lock when the process dies, however it dies, so a killed or
preempted run never leaves a stale lock and its requeued or restarted successor takes the directory over.
A second run into a directory in use stops at once, on every rank, naming the holder: two runs writing
one metrics.jsonl and one checkpoint folder would silently mix their records. Unless the holder is on its
way out: it marked itself stopping (a worker whose launcher is gone saves and stops: see
distrain/launch/watchdog.py), or it is an orphan on this host (its parent is PID 1). The new run then waits
for it, up to STOPPING_WAIT_S, saying so, rather than failing (and burning torchrun's restarts on it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from distrain.errors import ConfigError, UserError
from distrain.launch import dist

log = logging.getLogger("distrain")

STOPPING_WAIT_S = 120.0
"""How long a new run waits for a holder that is stopping before it is refused as in use."""


class RunDirInUse(UserError):
    """Another live run holds this run directory (exit status 2)."""

    agreed = True  # rank 0's verdict, broadcast


class Owner:
    """The run's hold on its directory (rank 0 holds the lock; `stopping()` is a no-op elsewhere)."""

    def __init__(self, handle: Any):
        self.handle = handle

    def stopping(self) -> None:
        """Note in the lock file that this run is stopping: a new run waits for it instead of failing."""
        if self.handle is None:
            return
        with open(self.handle.name, "r+") as f:  # in place: the lock is on this file, not on its name
            try:
                holder = json.loads(f.read())
            except ValueError:
                holder = {}
            f.seek(0)
            f.truncate()
            f.write(json.dumps({**holder, "stopping": True}))


@contextlib.contextmanager
def own_run_dir(run_dir: Path, is_main: bool, wait_s: float = STOPPING_WAIT_S) -> Iterator[Owner]:
    """Hold run_dir's lock for the block. Collective: every rank must call it. `wait_s`: the longest wait for
    a holder that is stopping (the other ranks wait in a collective meanwhile: keep it below its timeout)."""
    handle, verdict = None, None
    if is_main:
        handle, verdict = _take(run_dir, wait_s)
    # Every rank learns rank 0's verdict: a rank that stopped alone would leave the others waiting.
    verdict = dist.broadcast_object(verdict)
    if verdict is not None:
        kind, message = verdict
        if kind == "unusable":
            raise ConfigError("run.dir", message, "choose a folder path you can write to (not a file)")
        raise RunDirInUse(message, "wait for that run to end, stop it, or choose another run.dir")
    try:
        yield Owner(handle)
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _take(run_dir: Path, wait_s: float = STOPPING_WAIT_S) -> tuple[Any, tuple[str, str] | None]:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
    except OSError as exc:
        return None, ("unusable", f"{run_dir} cannot be used as the run directory: {exc.strerror or exc}")
    if not _lock(handle):
        handle.seek(0)
        text = handle.read()
        if _on_its_way_out(text):
            log.warning(
                "run directory %s is held by a run that is stopping (%s): waiting for it to exit (up to %.0f s)",
                run_dir,
                _describe(text, run_dir).rpartition("(")[2].rstrip(")"),
                wait_s,
            )
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and not _lock(handle):
                time.sleep(0.2)
        if not _lock(handle):
            handle.seek(0)
            message = _describe(handle.read(), run_dir)
            handle.close()
            return None, ("in use", message)
    handle.seek(0)
    handle.truncate()
    handle.write(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    )
    handle.flush()
    return handle, None


def _lock(handle: Any) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _on_its_way_out(text: str) -> bool:
    """The holder marked itself stopping, or it is an orphan on this host (re-parented to PID 1)."""
    try:
        holder = json.loads(text)
    except ValueError:
        return False
    if not isinstance(holder, dict):
        return False
    if holder.get("stopping"):
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        stat = Path(f"/proc/{holder['pid']}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[1] == "1"


def _describe(text: str, run_dir: Path) -> str:
    try:
        holder = json.loads(text)
        who = f"PID {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        who = "another process"
    return f"run directory {run_dir} is in use by a live run ({who})"
