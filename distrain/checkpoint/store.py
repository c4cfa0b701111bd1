"""How is state saved? Atomic, verified, rank-0-written checkpoints, and choosing one to resume from.

Layout of <run.dir>/checkpoints/:

    step-00000060.pt          torch.save of the full training state (see `TrainState.to_payload`)
    step-00000060/            or, with strategy: fsdp, a sharded checkpoint: every rank's shards and state.pt
                              (distrain.checkpoint.sharded)
    step-00000060.json        manifest: checksum and size of the .pt (of every file of the folder), epoch, step,
                              metrics; written *after* the checkpoint is complete, so one without a manifest
                              is an unfinished save
    best-step-....pt / .json  hard links to the best M checkpoints by checkpoint.monitor (best.json names it)
    step-00000060-prev.pt     a step saved again: its previous complete copy, kept until the new one is
      / -prev/ / -prev.json   published, then removed; a resume falls back to it (distrain.checkpoint.parking)
    latest.json               pointer to the newest complete checkpoint; moved only after the manifest

checkpoint.resume=never moves a run directory's checkpoints/ aside first, to checkpoints.old-<UTC time>/
(`set_aside`): a later automatic resume never picks up the older run, and nothing of it is deleted.

Save contract (`save_checkpoint`): called on **every rank**; the ranks' RNG states are gathered, rank 0
writes to a temporary file, flushes and fsyncs it, verifies the checksum, renames it into place (parking
the step's previous copy, if any), fsyncs the directory, and only then writes the manifest and moves
`latest.json`; every rank meets at a barrier.
A kill at any moment leaves at worst a temporary file or a .pt without manifest, both ignored on resume;
a step that already had a checkpoint keeps its previous copy resumable until the new one is published.

Loading uses `torch.load(weights_only=True)`: a file that carries pickled code is refused, never run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from distrain.atomic import atomic_write, atomic_write_bytes, fsync_path
from distrain.checkpoint.files import (
    CheckpointError,
    HashingFile,
    Manifest,
    _file_problem,
    publish,
    remove_checkpoint,
    torch_load,
)
from distrain.checkpoint.parking import PREV, described, is_parked, park, parked, unpark
from distrain.errors import UserError, WriteError
from distrain.launch import dist

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# step-00000060.pt: one file (strategy: ddp); step-00000060/: a sharded checkpoint's folder (strategy: fsdp);
# step-00000060-prev(.pt): the step's previous copy while it is saved again (distrain.checkpoint.parking)
_NAME = re.compile(r"^step-(\d{8})(-prev)?(\.pt)?$")


# ------------------------------------------------------------------------------------------ RNG state


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as weights_only-loadable values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------- save and load


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    payload: dict[str, Any],
    *,
    keep_last: int,
    is_main: bool,
    keep_best: int = 0,
    monitor: str = "val_loss",
    higher_is_better: bool = False,
    shards: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None,
    background: Any = None,
    owned: set[int] | None = None,
) -> Path:
    """Write `payload` as the checkpoint of payload['global_step']. Collective: call on every rank.

    `payload` must already hold everything but the RNG states; they are gathered here from every rank.
    `shards`: the (sharded) model and optimizer, written by every rank as a sharded checkpoint
    (distrain.checkpoint.sharded); the payload then holds the rest. `background` (distrain.checkpoint.background):
    return once the state is staged; the same steps then run in the writer thread, and the copy of the
    tensors in `owned` (background.step_owned: those only an optimizer step changes) is left to it too.
    Returns the checkpoint path (on every rank).
    """
    payload = dict(payload, rng=dist.all_gather_object(capture_rng()))
    folder = checkpoint_dir(run_dir)
    name = f"step-{payload['global_step']:08d}"
    path = folder / (name if shards is not None else f"{name}.pt")

    def keep(manifest: Manifest) -> None:  # rank 0, once the new checkpoint is complete
        _prune(folder, keep_last)
        if keep_best and monitor in manifest.metrics:
            _update_best(folder, manifest, keep_best, monitor, higher_is_better)

    if background is not None:
        background.wait()  # at most one write in flight; a failed one stops every rank here
        if shards is not None:
            from distrain.checkpoint.sharded import write_sharded_in_background

            write_sharded_in_background(
                path, payload, *shards, is_main=is_main, background=background, then=keep, owned=owned
            )
        elif is_main:
            copy = background.staging.stage(payload, owned)  # training goes on changing the live tensors

            def write() -> None:
                _make(folder)
                keep(_write_verified(path, copy))

            background.submit(write)
        return path
    problem = None
    try:
        if shards is not None:
            from distrain.checkpoint.sharded import write_sharded

            manifest = write_sharded(path, payload, *shards, is_main=is_main)  # every rank writes its shards
        elif is_main:
            _make(folder)
            manifest = _write_verified(path, payload)
        if is_main:
            keep(manifest)
    except UserError as exc:  # the same on every rank, or rank 0's alone (after the last collective)
        problem = (exc.message, exc.hint)
    # Nobody reads the new checkpoint, or runs ahead to the next save, before it is complete; and a failed
    # write stops every rank with rank 0's message (a bare barrier would leave them training alone).
    dist.raise_agreed(dist.broadcast_object(problem))
    return path


def set_aside(run_dir: str | Path, is_main: bool) -> Path | None:
    """checkpoint.resume=never into a run directory that already holds checkpoints: global rank 0 renames
    its checkpoints/ to checkpoints.old-<UTC time>/ before this run writes anything. Why not leave them:
    a later automatic resume (a requeue, a rerun) would pick the older run's newest checkpoint; why not
    delete them: a fresh start must not cost the user the previous run. Collective (every rank calls it,
    none goes on before the rename, a failure raises alike on every rank); returns the new name, or None."""
    folder = checkpoint_dir(run_dir)

    def move() -> str | None:
        try:
            moved = _move_aside(folder)
        except OSError as exc:  # no permission, a read-only file system: this run must not mix with them
            hint = WriteError(folder, exc).hint or "move them away yourself, or choose another run.dir"
            raise UserError(
                f"checkpoint.resume=never: cannot move the checkpoints in {folder} aside: {exc.strerror or exc}",
                hint,
            ) from None
        return str(moved) if moved else None

    moved = dist.rank0_decides(move, is_main)
    if moved is not None:
        log.info(
            "checkpoint.resume=never: the checkpoints already in %s were moved to %s (a later resume "
            "cannot pick them up; nothing was deleted)",
            folder,
            moved,
        )
    return Path(moved) if moved else None


def _move_aside(folder: Path) -> Path | None:
    if not folder.is_dir() or not any(folder.iterdir()):
        return None  # nothing an automatic resume could pick up
    stamp = time.strftime("%Y%m%d-%H%M%SZ", time.gmtime())
    target, n = folder.with_name(f"{folder.name}.old-{stamp}"), 1
    while target.exists():  # two fresh starts within a second (the run directory's lock is held: no race)
        n += 1
        target = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    os.rename(folder, target)
    fsync_path(folder.parent)
    return target


def _make(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(folder, exc) from None


def _write_verified(path: Path, payload: dict[str, Any]) -> Manifest:
    hashed = HashingFile()

    def write(f: BinaryIO) -> None:
        hashed.into(f)
        try:
            torch.save(payload, hashed)
            hashed.finish()  # the buffered rest into the file, before atomic_write's fsync
        except Exception:  # noqa: BLE001 (torch.save may hand the file's OSError on as a RuntimeError)
            if hashed.error is None:
                raise
            raise hashed.error from None

    def switch(tmp: Path) -> None:
        # Check what reached the disk before it replaces anything (a bad file never takes a good one's
        # place): written whole and fsynced, its size is the bytes hashed. Not read back to hash it again:
        # the checksum is of the very bytes written (HashingFile), and a read right after the write came
        # from the page cache, not the disk, so it proved nothing more; it cost a second pass over every
        # byte (and, after a direct write, a read from the disk into fresh pages). A resume still hashes
        # every file against its manifest. Then a copy of this step, if there is one (saved again; or a
        # sharded one, the strategy changed), is parked, not removed: it stays resumable until the new one
        # is published.
        problem = _file_problem(tmp, hashed.digest.hexdigest(), hashed.size, hashes=False)
        if problem:
            raise WriteError(path, OSError(f"it {problem} right after writing it (a failing disk?)"))
        park(path)

    atomic_write(path, write, before_replace=switch)
    manifest = Manifest(
        path,
        hashed.digest.hexdigest(),
        hashed.size,
        payload["epoch"],
        payload["step_in_epoch"],
        payload["global_step"],
        payload.get("metrics", {}),
    )
    publish(manifest)
    unpark(path)
    return manifest


def _prune(folder: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in list_checkpoints(folder)[keep_last:]:
        remove_checkpoint(old)
        unpark(old)  # a previous copy left by a killed re-save


def list_best(folder: Path) -> list[Manifest]:
    """The kept best checkpoints (best-step-* with manifests), best first; ties keep the older one first."""
    if not (folder / "best.json").exists():
        return []
    marker = json.loads((folder / "best.json").read_text())
    monitor, sign = marker["monitor"], 1.0 if marker.get("higher_is_better", False) else -1.0
    found = [
        m
        for p in folder.glob("best-step-*")
        if p.suffix != ".json"
        if (m := Manifest.read(p)) is not None and monitor in m.metrics and not m.problem(hashes=False)
    ]
    # A parked copy (a kill while its step was linked again) counts only while the new link is incomplete.
    linked = {m.global_step for m in found if not is_parked(m.path)}
    found = [m for m in found if not (is_parked(m.path) and m.global_step in linked)]
    return sorted(found, key=lambda m: (-sign * m.metrics[monitor], m.global_step))


def _update_best(folder: Path, manifest: Manifest, keep_best: int, monitor: str, higher_is_better: bool) -> None:
    """Keep the best `keep_best` checkpoints by `monitor` as hard links best-<name> (no copy, and they
    survive keep_last pruning); a link is made only to a complete, verified file."""
    marker = folder / "best.json"
    wanted = {"monitor": monitor, "higher_is_better": higher_is_better}
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        for old in folder.glob("best-*"):
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        atomic_write_bytes(marker, json.dumps(wanted).encode())
    link = folder / f"best-{manifest.path.name}"
    tmp = folder / f".{link.name}.tmp-{os.getpid()}"
    try:
        if manifest.files is None:
            tmp.unlink(missing_ok=True)
            os.link(manifest.path, tmp)
        else:  # a sharded checkpoint: a folder of links to its files, renamed into place whole
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name in manifest.files:
                os.link(manifest.path / name, tmp / name)
        park(link)  # this step's best copy already (saved again): kept until the new link has its manifest
        os.rename(tmp, link)
    except OSError as exc:
        raise WriteError(link, exc) from None
    atomic_write_bytes(link.with_suffix(".json"), dataclasses.replace(manifest, path=link).to_json().encode())
    unpark(link)
    for loser in list_best(folder)[keep_best:]:
        remove_checkpoint(loser.path)


def list_checkpoints(folder: Path) -> list[Path]:
    """Periodic checkpoints in `folder`, newest (highest global step) first, by their own names (step-N.pt,
    step-N): also a step found only as a parked copy (step-N-prev...), whose save was killed mid-switch."""
    if not folder.is_dir():
        return []
    found = {folder / p.name.replace(PREV, "") for p in folder.iterdir() if _NAME.match(p.name)}
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)


def load_payload(
    path: str | Path, map_location: str | torch.device = "cpu", *, model_weights: bool = True
) -> dict[str, Any]:
    """torch.load with weights_only=True. Raises CheckpointError for missing, damaged or code-carrying files.
    A sharded checkpoint's folder: its state.pt, plus (with `model_weights`) the whole model's weights
    read from the shards into this process (for evaluation and export; a resume loads shards only)."""
    path = Path(path)
    if path.is_dir():
        from distrain.checkpoint.sharded import read_sharded

        return read_sharded(path, map_location, model_weights=model_weights)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    payload = torch_load(path, map_location)
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a distrain checkpoint (no 'model' entry)")
    return payload


def find_resumable(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of the run whose file matches its manifest; damaged ones are reported and skipped.
    A step whose new copy is incomplete (killed while it was saved again) resumes from its parked copy."""
    for path in list_checkpoints(checkpoint_dir(run_dir)):
        if _verifies(path, Manifest.read(path)):
            return path
        previous = described(parked(path))
        if previous is not None and _verifies(previous.path, previous):
            log.warning(
                "resuming from %s: the previous copy of that step, kept while it was saved again", previous.path
            )
            return previous.path
    return None


def _verifies(path: Path, manifest: Manifest | None) -> bool:
    if manifest is None:
        log.warning("skipping checkpoint %s: no manifest (the save did not finish)", path)
        return False
    problem = manifest.problem()
    if problem:
        log.warning("skipping checkpoint %s: it %s; trying the one before it", path, problem)
        return False
    return True


def load_model_weights(model: torch.nn.Module, payload: dict[str, Any], path: str | Path) -> None:
    """The checkpoint's model state into `model`; a model of another shape is a CheckpointError."""
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: {' '.join(lines[:3])}",
            "use the config the checkpoint was trained with (distrain inspect shows it)",
        ) from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's newest complete checkpoint."""
    path = Path(path)
    if _NAME.match(path.name) and path.is_dir():  # a sharded checkpoint: its manifest is checked here too
        manifest = Manifest.read(path)
        problem = "has no manifest (the save did not finish)" if manifest is None else manifest.problem()
        if problem:
            raise CheckpointError(
                f"checkpoint {path} {problem}",
                "pass another checkpoint, or the run directory (its newest complete one)",
            )
        return path
    if path.is_dir():
        found = find_resumable(path)
        if found is None:
            raise CheckpointError(f"{path} holds no complete checkpoint (looked in {path / 'checkpoints'})")
        return found
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist", "pass a .pt file, a sharded checkpoint's folder or a run directory"
        )
    return path
