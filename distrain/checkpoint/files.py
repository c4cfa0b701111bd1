"""A checkpoint's files: the error type, hashing while writing, the manifest that makes a checkpoint
complete, publishing (manifest, then latest.json), removal, and the weights-only load. The building blocks
that the whole-file (.pt, distrain.checkpoint.store) and the sharded (distrain.checkpoint.sharded) formats
share."""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import pickle
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from distrain.atomic import atomic_write_bytes
from distrain.errors import UserError, WriteError


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, or carrying code."""


# The checksum of a checkpoint's files: xxh3-128 (the xxhash package) where it is installed, else sha256.
# Why not sha256 everywhere: the checksum guards against damage (a torn write, a flipped bit, a truncated
# copy), not against an attacker (loading never unpickles code: torch_load below), and its CPU is the bulk
# of a background write's, which where every core trains comes out of training's time. Timed here on one
# core: sha256 about 900 MiB/s (OpenSSL 3.0), xxh3-128 about 8 GiB/s; a 400 MiB shard's writer CPU went
# from 0.57 s to 0.15 s, and on 2 ranks of 2 cores a background save from about 0.7x a synchronous one's
# cost to 0.46x-0.51x (bench/sharding.py). Each manifest names its algorithm: checkpoints of either verify.
try:
    import xxhash
except ImportError:  # a trimmed environment: sha256 still verifies everything, only slower
    xxhash = None
CHECKSUM = "xxh3_128" if xxhash is not None else "sha256"


def new_digest(algorithm: str = CHECKSUM) -> Any:
    """A running checksum (update, hexdigest) of `algorithm`; ValueError for one this install lacks."""
    if algorithm == "xxh3_128" and xxhash is not None:
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(algorithm)


def checksum_of(path: Path, algorithm: str = CHECKSUM) -> str:
    digest = new_digest(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_bytes(data: bytes, algorithm: str = CHECKSUM) -> str:
    digest = new_digest(algorithm)
    digest.update(data)
    return digest.hexdigest()


# A checkpoint's bytes go to the disk through an aligned buffer of this size, with O_DIRECT where the file
# system has it. Why: a buffered write copies every byte into the page cache, into pages the kernel must
# first find and clear; on a VM whose free memory goes back to the host (virtio-balloon's free page
# reporting, as on this project's Firecracker VMs) each fresh page is a fault in the host as well. Timed
# here: 400 MiB into a new file cost 2 to 4 s of CPU buffered, 0.03 s with O_DIRECT (`dd`), and that CPU is
# taken from training wherever the ranks use every core, background write or not (a vCPU stalled in the
# host is past any thread priority). A direct write leaves the page cache alone: the writer waits on the
# disk instead, without a core. 8 MiB: large requests for the disk, a small buffer kept per writer.
_CHUNK = 8 << 20
_ALIGN = 4096  # O_DIRECT's alignment of address, length and offset (the logical block size, at most 4 KiB)
_spare: list[mmap.mmap] = []  # buffers of files closed, reused: a new one pays for the first touch of its pages
_spare_lock = threading.Lock()


class HashingFile:
    """The file torch.save (or DCP's writer) writes to, hashing the bytes on their way: one pass over the
    data, no second read to checksum it, and no serialized copy of the whole checkpoint in memory (a
    BytesIO and its getvalue() were two). The bytes hashed are the bytes written, from the same buffer.

    Writes are gathered into an aligned buffer written in _CHUNK pieces with O_DIRECT (see _CHUNK), or
    buffered where the file system refuses it (tmpfs before Linux 6.6, other systems). So the bytes reach
    the file only when the buffer fills, at `finish()` (the caller's fsync comes after it) and at `close()`
    (which fsyncs): `flush()` keeps them (DCP flushes after every tensor; writing a partial block there
    would leave the file's offset unaligned for the next direct write)."""

    def __init__(self) -> None:
        self._f: BinaryIO | None = None
        self.digest, self.size = new_digest(), 0
        self.error: OSError | None = None
        self._buffer: mmap.mmap | None = None
        self._filled = 0
        self._direct = False

    def into(self, f: BinaryIO) -> None:
        self._f = f
        with _spare_lock:
            self._buffer = _spare.pop() if _spare else mmap.mmap(-1, _CHUNK)  # page-aligned
        self._direct = _set_direct(f.fileno(), True)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        self.size += n
        done = 0
        while done < n:
            take = min(n - done, _CHUNK - self._filled)
            start, self._filled = self._filled, self._filled + take
            self._buffer[start : self._filled] = view[done : done + take]
            # Hashed from the buffer, just filled: still in the cache (one read of the source, not two; 0.07
            # s against 0.09 s of CPU per 400 MiB here), and the very bytes that go to the file.
            with memoryview(self._buffer) as buffered:
                self.digest.update(buffered[start : self._filled])
            done += take
            if self._filled == _CHUNK:
                self._write_out(_CHUNK)
        return n

    def _write_out(self, count: int) -> None:
        """The buffer's first `count` bytes to the file (a multiple of _ALIGN while direct)."""
        view = memoryview(self._buffer)[:count]
        try:
            while view:
                try:
                    written = os.write(self._f.fileno(), view)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self._direct:
                        raise
                    self._direct = _set_direct(self._f.fileno(), False)  # an alignment it does not take: buffered
                    continue
                view = view[written:]
        except OSError as exc:  # kept: torch.save may hand it on as another exception
            self.error = exc
            raise
        finally:
            view.release()
        self._filled -= count
        if self._filled:
            self._buffer.move(0, count, self._filled)

    def finish(self) -> None:
        """Everything written into the file (the unaligned tail buffered); the buffer goes back for reuse.
        The caller fsyncs (close() does)."""
        if self._buffer is None:
            return
        aligned = self._filled - self._filled % _ALIGN
        if aligned:
            self._write_out(aligned)
        if self._filled:
            if self._direct:
                self._direct = _set_direct(self._f.fileno(), False)
            self._write_out(self._filled)
        with _spare_lock:
            _spare.append(self._buffer)
        self._buffer = None

    def flush(self) -> None:
        pass  # see the class docstring: the bytes go out at finish()

    # What DCP's writer asks of a stream besides write and flush (distrain.checkpoint.sharded hashes its shards
    # with this class too).
    def tell(self) -> int:
        return self.size  # a fresh file, written from its start: what the file holds once finished

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        """finish(), fsync, close."""
        if self._f.closed:
            return
        self.finish()
        os.fsync(self._f.fileno())
        self._f.close()

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; whether it is on now (never where the system lacks it)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    import fcntl  # here: Linux has O_DIRECT; some systems have no fcntl

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:  # EINVAL: this file system has no direct I/O
        return False
    return on


@dataclass(frozen=True)
class Manifest:
    """What is known about a complete checkpoint without loading it. `path` is a .pt file, or a sharded
    checkpoint's folder whose every file is listed in `files` (name -> [checksum, size]); `digest` is
    the .pt's checksum, or that of the folder's `files` listing; both of `algorithm` (CHECKSUM when
    written by this version; "sha256" in manifests written before it named one)."""

    path: Path
    digest: str
    size: int
    epoch: int
    step_in_epoch: int
    global_step: int
    metrics: dict[str, float]
    files: dict[str, list] | None = None
    algorithm: str = CHECKSUM

    @staticmethod
    def read(path: Path) -> Manifest | None:
        meta_path = path.with_suffix(".json")  # step-N.pt and step-N/ both have step-N.json
        try:
            meta = json.loads(meta_path.read_text())
            files = meta.get("files")
            algorithm = str(meta.get("checksum", "sha256"))
            return Manifest(
                path,
                meta["digest"] if "checksum" in meta else meta["sha256"],
                int(meta["size"]),
                int(meta["epoch"]),
                int(meta["step_in_epoch"]),
                int(meta["global_step"]),
                dict(meta.get("metrics", {})),
                {str(k): list(v) for k, v in files.items()} if files is not None else None,
                algorithm,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def to_json(self) -> str:
        meta = {
            "file": self.path.name,
            "checksum": self.algorithm,
            "digest": self.digest,
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
        if hashes:
            try:
                new_digest(self.algorithm)
            except ValueError:
                return (
                    f"has a manifest whose checksum {self.algorithm!r} this install cannot compute "
                    f"(pip install xxhash, or a newer distrain)"
                )
        if self.files is None:
            return _file_problem(self.path, self.digest, self.size, hashes, self.algorithm)
        if not self.path.is_dir():
            return "is not a folder, its manifest lists a sharded checkpoint's files"
        for name, (digest, size) in sorted(self.files.items()):
            problem = _file_problem(self.path / name, digest, size, hashes, self.algorithm)
            if problem:
                return f"holds {name}, which {problem}"
        return None


def _file_problem(path: Path, digest: str, size: int, hashes: bool = True, algorithm: str = CHECKSUM) -> str | None:
    try:
        found = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if found != size:
        return f"has {found} bytes, its manifest says {size} (truncated or overwritten)"
    if hashes and checksum_of(path, algorithm) != digest:
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
