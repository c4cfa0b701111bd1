"""Who owns a run directory: one run at a time, held by global rank 0 for the whole run.

    with own_run_dir(run_dir, is_main) :     # every rank; raises RunDirInUse on every rank if held
        ...

Rank 0 takes an exclusive `flock` on `<run.dir>/.lock` and writes who holds it (host, PID, start time)
into the file. The kernel drops the lock when the process dies, however it dies, so a killed or
preempted run never leaves a stale lock and its requeued or restarted successor takes the directory over.
A second run into a directory in use stops at once, on every rank, naming the holder: two runs writing
one metrics.jsonl and one checkpoint folder would silently mix their records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from distrain.errors import ConfigError, UserError
from distrain.launch import dist


class RunDirInUse(UserError):
    """Another live run holds this run directory (exit status 2)."""

    agreed = True  # rank 0's verdict, broadcast


@contextlib.contextmanager
def own_run_dir(run_dir: Path, is_main: bool) -> Iterator[None]:
    """Hold run_dir's lock for the block. Collective: every rank must call it."""
    handle, verdict = None, None
    if is_main:
        handle, verdict = _take(run_dir)
    # Every rank learns rank 0's verdict: a rank that stopped alone would leave the others waiting.
    verdict = dist.broadcast_object(verdict)
    if verdict is not None:
        kind, message = verdict
        if kind == "unusable":
            raise ConfigError("run.dir", message, "choose a folder path you can write to (not a file)")
        raise RunDirInUse(message, "wait for that run to end, stop it, or choose another run.dir")
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _take(run_dir: Path) -> tuple[Any, tuple[str, str] | None]:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
    except OSError as exc:
        return None, ("unusable", f"{run_dir} cannot be used as the run directory: {exc.strerror or exc}")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
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


def _describe(text: str, run_dir: Path) -> str:
    try:
        holder = json.loads(text)
        who = f"PID {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        who = "another process"
    return f"run directory {run_dir} is in use by a live run ({who})"
