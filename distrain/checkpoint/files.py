"""A checkpoint's files: the error type, hashing while writing, the manifest that makes a checkpoint
complete, publishing (manifest, then latest.json), removal, and the weights-only load. The building blocks
that the whole-file (.pt, distrain.checkpoint.store) and the sharded (distrain.checkpoint.sharded) formats
share."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from distrain.atomic import atomic_write_bytes
from distrain.errors import UserError, WriteError


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, or carrying code."""


class HashingFile:
    """The file torch.save (or DCP's writer) writes to, hashing the bytes on their way: one pass over the
    data, no second read to checksum it, and no serialized copy of the whole checkpoint in memory (a
    BytesIO and its getvalue() were two)."""

    def __init__(self) -> None:
        self._f: BinaryIO | None = None
        self.digest, self.size = hashlib.sha256(), 0
        self.error: OSError | None = None

    def into(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        try:
            return self._f.write(data)
        except OSError as exc:  # kept: torch.save may hand it on as another exception
            self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()

    # What DCP's writer asks of a stream besides write and flush (distrain.checkpoint.sharded hashes its shards
    # with this class too).
    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What is known about a complete checkpoint without loading it. `path` is a .pt file, or a sharded
    checkpoint's folder whose every file is listed in `files` (name -> [sha256, size])."""

    path: Path
    sha256: str
    size: int
    epoch: int
    step_in_epoch: int
    global_step: int
    metrics: dict[str, float]
    files: dict[str, list] | None = None

    @staticmethod
    def read(path: Path) -> Manifest | None:
        meta_path = path.with_suffix(".json")  # step-N.pt and step-N/ both have step-N.json
        try:
            meta = json.loads(meta_path.read_text())
            files = meta.get("files")
            return Manifest(
                path,
                meta["sha256"],
                int(meta["size"]),
                int(meta["epoch"]),
                int(meta["step_in_epoch"]),
                int(meta["global_step"]),
                dict(meta.get("metrics", {})),
                {str(k): list(v) for k, v in files.items()} if files is not None else None,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def to_json(self) -> str:
        meta = {
            "file": self.path.name,
            "sha256": self.sha256,
            "size": self.size,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "metrics": self.metrics,
        }
        if self.files is not None:
            meta["files"] = self.files
        return json.dumps(meta, indent=1)

    def problem(self, *, hashes: bool = True) -> str | None:
        """Why the checkpoint does not match its manifest (truncated, overwritten, a shard missing), or None.
        `hashes=False`: files and sizes only (no read of the data; for choices made on every save)."""
        if self.files is None:
            return _file_problem(self.path, self.sha256, self.size, hashes)
        if not self.path.is_dir():
            return "is not a folder, its manifest lists a sharded checkpoint's files"
        for name, (sha256, size) in sorted(self.files.items()):
            problem = _file_problem(self.path / name, sha256, size, hashes)
            if problem:
                return f"holds {name}, which {problem}"
        return None


def _file_problem(path: Path, sha256: str, size: int, hashes: bool = True) -> str | None:
    try:
        found = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if found != size:
        return f"has {found} bytes, its manifest says {size} (truncated or overwritten)"
    if hashes and sha256_of(path) != sha256:
        return "does not match the checksum in its manifest (damaged)"
    return None


def remove_checkpoint(path: Path) -> None:
    """Manifest first: a checkpoint without one is ignored, so a kill between the two steps is harmless."""
    path.with_suffix(".json").unlink(missing_ok=True)
    remove_data(path)


def remove_data(path: Path) -> None:
    """A checkpoint's file or folder, whichever it is (its manifest is left to the caller)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(manifest: Manifest) -> None:
    """Make a complete, verified checkpoint visible: its manifest, then latest.json. One whose manifest
    cannot be written is removed (resume would skip it; it would only take space)."""
    path = manifest.path
    try:
        atomic_write_bytes(path.with_suffix(".json"), manifest.to_json().encode())
    except WriteError:
        remove_checkpoint(path)
        raise
    atomic_write_bytes(path.parent / "latest.json", json.dumps({"file": path.name}).encode())


def torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True), its failures as CheckpointErrors (damaged, or carrying code)."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(GLOBAL [\w.]+|Unsupported operand \S+)", str(exc))
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds pickled objects other than tensors and plain "
            f"containers, which could run code when loaded ({found.group(1) if found else 'not weights-only'})",
            "only load checkpoints you trust; distrain never unpickles arbitrary objects",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {str(exc).splitlines()[0]}") from None
    return payload
