"""Never a half-written file: atomic writes (a temporary file, flushed, fsynced, renamed into place, the
directory fsynced). Checkpoints, metrics.jsonl, plots and the W&B record all write through here, so
logging needs nothing from checkpointing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from distrain.errors import WriteError


def fsync_path(path: Path) -> None:
    """fsync a directory (its entries: a rename into it) or a file (one a library wrote without fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(
    path: Path, write: Callable[[BinaryIO], Any], before_replace: Callable[[Path], Any] | None = None
) -> None:
    """atomic_write_bytes, the content written by `write(file)`: to a temporary file, flushed, fsynced,
    (`before_replace(tmp)`: checked, the old file set aside), renamed into place, the directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:  # disk full, no permission: the old file stays, the partial one goes
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_dir(path: Path, fill: Callable[[Path], Any]) -> Path:
    """A new folder `path`, its files written by `fill(tmp)` into a temporary folder next to it, then
    renamed into place: readers see no folder or the whole one. A `path` that exists and is not an empty
    folder is refused (a UserError), never written over."""
    from distrain.errors import UserError

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(
            f"{path} already exists and is not an empty folder: it is never written over",
            "choose a new folder, or remove this one first",
        )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if tmp.exists():  # left by a killed writer of the same pid
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        fill(tmp)
        # rename(2) replaces an empty folder and fails on any other: one that appeared meanwhile is kept.
        os.rename(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:
        _remove_tree(tmp)
        raise WriteError(path, exc) from None
    except BaseException:
        _remove_tree(tmp)
        raise
    return path


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
