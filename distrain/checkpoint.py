"""How is state saved? Atomic, verified, rank-0-written checkpoints, and choosing one to resume from.

Layout of <run.dir>/checkpoints/:

    step-00000060.pt          torch.save of the full training state (see `TrainState.to_payload`)
    step-00000060.json        manifest: sha256 and size of the .pt, epoch, step, metrics; written *after*
                              the .pt is complete, so a .pt without a manifest is an unfinished save
    best-step-....pt / .json  hard links to the best M checkpoints by checkpoint.monitor (best.json names it)
    latest.json               pointer to the newest complete checkpoint; moved only after the manifest

Save contract (`save_checkpoint`): called on **every rank**; the ranks' RNG states are gathered, rank 0
writes to a temporary file, flushes and fsyncs it, renames it into place, fsyncs the directory, verifies
the checksum, and only then writes the manifest and moves `latest.json`; every rank meets at a barrier.
A kill at any moment leaves at worst a temporary file or a .pt without manifest, both ignored on resume.

Loading uses `torch.load(weights_only=True)`: a file that carries pickled code is refused, never run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distrain import dist
from distrain.errors import UserError, WriteError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, or carrying code."""


# ------------------------------------------------------------------------------------------ RNG state

def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as weights_only-loadable values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------- file helpers

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:  # disk full, no permission: the old file stays, the partial one goes
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ manifest

@dataclass(frozen=True)
class Manifest:
    """What is known about a complete checkpoint without loading it."""

    path: Path
    sha256: str
    size: int
    epoch: int
    step_in_epoch: int
    global_step: int
    metrics: dict[str, float]

    @staticmethod
    def read(pt_path: Path) -> "Manifest | None":
        meta_path = pt_path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
            return Manifest(pt_path, meta["sha256"], int(meta["size"]), int(meta["epoch"]),
                            int(meta["step_in_epoch"]), int(meta["global_step"]), dict(meta.get("metrics", {})))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps({"file": self.path.name, "sha256": self.sha256, "size": self.size,
                           "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                           "global_step": self.global_step, "metrics": self.metrics}, indent=1)

    def problem(self) -> str | None:
        """Why the .pt does not match its manifest (truncated, overwritten), or None if it does."""
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if size != self.size:
            return f"has {size} bytes, its manifest says {self.size} (truncated or overwritten)"
        if sha256_of(self.path) != self.sha256:
            return "does not match the checksum in its manifest (damaged)"
        return None


# ------------------------------------------------------------------------------------- save and load

def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, payload: dict[str, Any], *, keep_last: int, is_main: bool,
                    keep_best: int = 0, monitor: str = "val_loss", higher_is_better: bool = False) -> Path:
    """Write `payload` as the checkpoint of payload['global_step']. Collective: call on every rank.

    `payload` must already hold everything but the RNG states; they are gathered here from every rank.
    Returns the checkpoint path (on every rank).
    """
    payload = dict(payload, rng=dist.all_gather_object(capture_rng()))
    folder = checkpoint_dir(run_dir)
    path = folder / f"step-{payload['global_step']:08d}.pt"
    problem = None
    if is_main:
        try:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WriteError(folder, exc) from None
            manifest = _write_verified(path, payload)
            _prune(folder, keep_last)
            if keep_best and monitor in manifest.metrics:
                _update_best(folder, manifest, keep_best, monitor, higher_is_better)
        except WriteError as exc:
            problem = (exc.message, exc.hint)
    # Nobody reads the new checkpoint, or runs ahead to the next save, before it is complete; and a failed
    # write stops every rank with rank 0's message (a bare barrier would leave them training alone).
    problem = dist.broadcast_object(problem)
    if problem is not None:
        error = UserError(*problem)
        error.agreed = True
        raise error
    return path


def _write_verified(path: Path, payload: dict[str, Any]) -> Manifest:
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    manifest = Manifest(path, hashlib.sha256(data).hexdigest(), len(data), payload["epoch"],
                        payload["step_in_epoch"], payload["global_step"], payload.get("metrics", {}))
    # Verify what reached the disk before any pointer names it.
    problem = manifest.problem()
    if problem:
        path.unlink(missing_ok=True)  # never leave a bad file where a good one is expected
        raise WriteError(path, OSError(f"it {problem} right after writing it (a failing disk?)"))
    try:
        atomic_write_bytes(path.with_suffix(".json"), manifest.to_json().encode())
    except WriteError:
        path.unlink(missing_ok=True)  # a .pt without its manifest would only take space (resume skips it)
        raise
    atomic_write_bytes(path.parent / "latest.json", json.dumps({"file": path.name}).encode())
    return manifest


def _prune(folder: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in list_checkpoints(folder)[keep_last:]:
        # Manifest first: a .pt without a manifest is ignored, so a kill between the two unlinks is harmless.
        old.with_suffix(".json").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def list_best(folder: Path) -> list[Manifest]:
    """The kept best checkpoints (best-*.pt with manifests), best first; ties keep the older one first."""
    if not (folder / "best.json").exists():
        return []
    marker = json.loads((folder / "best.json").read_text())
    monitor, sign = marker["monitor"], 1.0 if marker.get("higher_is_better", False) else -1.0
    found = [m for p in folder.glob("best-*.pt") if (m := Manifest.read(p)) is not None and monitor in m.metrics]
    return sorted(found, key=lambda m: (-sign * m.metrics[monitor], m.global_step))


def _update_best(folder: Path, manifest: Manifest, keep_best: int, monitor: str, higher_is_better: bool) -> None:
    """Keep the best `keep_best` checkpoints by `monitor` as hard links best-<name> (no copy, and they
    survive keep_last pruning); a link is made only to a complete, verified file."""
    marker = folder / "best.json"
    wanted = {"monitor": monitor, "higher_is_better": higher_is_better}
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        for old in folder.glob("best-*"):
            old.unlink()
        atomic_write_bytes(marker, json.dumps(wanted).encode())
    link = folder / f"best-{manifest.path.name}"
    tmp = folder / f".{link.name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.link(manifest.path, tmp)
    os.replace(tmp, link)
    atomic_write_bytes(link.with_suffix(".json"), manifest.to_json().encode())
    for loser in list_best(folder)[keep_best:]:
        loser.path.with_suffix(".json").unlink(missing_ok=True)
        loser.path.unlink(missing_ok=True)


def list_checkpoints(folder: Path) -> list[Path]:
    """Periodic checkpoints in `folder`, newest (highest global step) first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)


def load_payload(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True. Raises CheckpointError for missing, damaged or code-carrying files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(GLOBAL [\w.]+|Unsupported operand \S+)", str(exc))
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds pickled objects other than tensors and plain "
            f"containers, which could run code when loaded ({found.group(1) if found else 'not weights-only'})",
            "only load checkpoints you trust; distrain never unpickles arbitrary objects") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a distrain checkpoint (no 'model' entry)")
    return payload


def find_resumable(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of the run whose file matches its manifest; damaged ones are reported and skipped."""
    for path in list_checkpoints(checkpoint_dir(run_dir)):
        manifest = Manifest.read(path)
        if manifest is None:
            log.warning("skipping checkpoint %s: no manifest (the save did not finish)", path)
            continue
        problem = manifest.problem()
        if problem:
            log.warning("skipping checkpoint %s: it %s; trying the one before it", path, problem)
            continue
        return path
    return None


def load_model_weights(model: torch.nn.Module, payload: dict[str, Any], path: str | Path) -> None:
    """The checkpoint's model state into `model`; a model of another shape is a CheckpointError."""
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"checkpoint {path} does not fit this model: {' '.join(lines[:3])}",
                              "use the config the checkpoint was trained with (distrain inspect shows it)") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's newest complete checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = find_resumable(path)
        if found is None:
            raise CheckpointError(f"{path} holds no complete checkpoint (looked in {path / 'checkpoints'})")
        return found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", "pass a .pt file or a run directory")
    return path
