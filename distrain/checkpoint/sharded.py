"""Sharded checkpoints (strategy: fsdp): every rank writes its own shards; no rank holds the whole model.

    checkpoints/step-00000060/      renamed into place by rank 0 once every rank has written
        __0_0.distcp, __1_0.distcp  each rank's shards of model and optimizer (torch.distributed.checkpoint)
        .metadata                   DCP's index of the shards (written by rank 0 after all shards)
        state.pt                    the rest: progress, scheduler, stopper, every rank's RNG, config
    checkpoints/step-00000060.json  manifest: checksum and size of every file above, written last

The same contract as a .pt checkpoint (distrain.checkpoint): atomic (written into a fresh temporary
folder, renamed whole; DCP itself writes in place and its .metadata last, so reusing a folder could leave
an old index over a mixture of two steps that loads without error), verified (DCP has no checksums of its
own: a flipped byte would load silently), loaded without unpickling code (DCP's .metadata is a pickle: it
is read here with an allow-list of DCP's own metadata classes), complete for an exact resume.

Resharding is DCP's: the shards are read into whatever the resuming run holds, so a checkpoint of 2
processes resumes on 3, on 1, under DDP (whole tensors), and a DDP .pt checkpoint resumes under fsdp.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distrain.atomic import atomic_write_bytes, fsync_path
from distrain.checkpoint.files import (
    CheckpointError,
    HashingFile,
    Manifest,
    checksum_bytes,
    checksum_of,
    publish,
    torch_load,
)
from distrain.checkpoint.parking import park, unpark
from distrain.errors import WriteError
from distrain.launch import dist

STATE_FILE = "state.pt"


def _first_os_error(exc: BaseException) -> OSError:
    """The OSError inside DCP's CheckpointException (its per-rank failures), for the user's message."""
    for failure in getattr(exc, "failures", {}).values():
        inner = getattr(failure, "exc", failure)
        if isinstance(inner, OSError):
            return inner
    return OSError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


# ------------------------------------------------------------------------------------------------ save


def _fresh_folder(path: Path, is_main: bool) -> Path:
    """The temporary folder every rank writes into, made by rank 0 (a fresh one: see the module docstring).
    Collective; a failure raises alike on every rank."""

    def make() -> str:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as exc:
            raise WriteError(tmp, exc) from None
        return str(tmp)

    return Path(dist.rank0_decides(make, is_main))


def _dcp_save(state: dict[str, Any], writer: Any, *, process_group: Any = None) -> None:
    """dcp.save of a state of plain dicts (collective in a group). In one process, DCP's own one-process path
    (no_dist): dcp.save takes it too, but warns on every call that it is "assuming the intent is to save in
    a single process", even when told so; a warnings filter around the call would not be thread-safe (the
    background saves run it in a writer thread)."""
    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import _save_state_dict

    if tdist.is_available() and tdist.is_initialized():
        dcp.save(state, storage_writer=writer, process_group=process_group)
    else:
        _save_state_dict(state, storage_writer=writer, no_dist=True)


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


class _HashingFiles:
    """DCP's local file system for one save, every file it writes hashed as the bytes go out (HashingFile):
    the manifest's checksums come from the write itself. Why not hash the shards afterwards: a second
    read of every byte, whose CPU (where every core trains) comes out of training's time."""

    def __init__(self) -> None:
        from torch.distributed.checkpoint.filesystem import FileSystem

        self._fs = FileSystem()
        self.written: dict[str, list] = {}  # file name -> [checksum, size], this process's files

    def __getattr__(self, name: str) -> Any:  # concat_path, mkdir, exists, rm_file, ...: DCP's own
        return getattr(self._fs, name)

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str):
        with self._fs.create_stream(path, mode) as stream:
            if "w" not in mode:
                yield stream
                return
            hashed = HashingFile()
            hashed.into(stream)
            with _no_zip_crc():
                yield hashed
            hashed.close()  # the rest written and fsynced (DCP closes its shards itself; .metadata it does not)
        self.written[Path(path).name] = [hashed.hexdigest(), hashed.size]

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        self._fs.rename(path, new_path)  # DCP's .metadata: written as .metadata.tmp, then renamed
        if Path(path).name in self.written:
            self.written[Path(new_path).name] = self.written.pop(Path(path).name)


_crc_lock = threading.Lock()
_crc_users = [0, True]  # writes inside _no_zip_crc now, and torch's setting before the first of them


@contextlib.contextmanager
def _no_zip_crc():
    """torch.save without the CRC-32 of every record of its zip (torch.serialization.set_crc32_options),
    while DCP writes a shard. Why: the shard's checksum, hashed as it is written, already covers every byte,
    and the CRC was a second pass over them (timed: 0.155 s of CPU per 256 MB, about 0.25 s of a 400 MB
    shard's 0.66 s, where every core trains). torch.load does not check it; the shards' zip records are
    DCP's inner format, read by nothing else. The setting is torch's, for the whole process: it is set
    once by the first write inside and restored by the last (another thread's torch.save meanwhile writes
    its file without the CRC too, a file torch.load reads all the same)."""
    from torch.serialization import get_crc32_options, set_crc32_options

    with _crc_lock:
        if _crc_users[0] == 0:
            _crc_users[1] = get_crc32_options()
            set_crc32_options(False)
        _crc_users[0] += 1
    try:
        yield
    finally:
        with _crc_lock:
            _crc_users[0] -= 1
            if _crc_users[0] == 0:
                set_crc32_options(_crc_users[1])


def _writer(tmp: Path):
    from torch.distributed.checkpoint import FileSystemWriter

    # sync_files: each shard is fsynced before DCP's coordinator writes .metadata.
    writer = FileSystemWriter(tmp, sync_files=True, single_file_per_rank=True)
    writer.fs = _HashingFiles()
    return writer


def _own_files(tmp: Path, writer: Any) -> dict[str, list]:
    """This rank's files of the checkpoint (its shards; the coordinator's also .metadata) with the checksums
    hashed as they were written, each checked against the file on disk (written whole and fsynced: its
    size is the bytes hashed). Raises OSError."""
    files = dict(writer.fs.written)
    for name, (_, size) in files.items():
        found = (tmp / name).stat().st_size
        if found != size:
            raise OSError(f"{name} has {found} bytes right after {size} were written to it (a failing disk?)")
    return files


def _failed_write(tmp: Path, exc: BaseException) -> tuple[str, str | None]:
    error = WriteError(tmp, _first_os_error(exc))
    return error.message, error.hint


def _complete(tmp: Path, path: Path, payload: dict[str, Any], every: list[dict[str, list]]) -> Manifest:
    """Rank 0, once every rank's shards are written: state.pt, checksums, the rename, the manifest."""
    folder = path.parent
    try:
        files: dict[str, list] = {}
        for listed in every:
            files.update(listed)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        atomic_write_bytes(tmp / STATE_FILE, data)
        files[STATE_FILE] = [checksum_bytes(data), len(data)]
        if ".metadata" not in files:  # not hashed by a writer (DCP's coordinator was another rank): hashed here
            files[".metadata"] = [checksum_of(tmp / ".metadata"), (tmp / ".metadata").stat().st_size]
        unlisted = sorted(set(os.listdir(tmp)) - set(files))
        if unlisted:  # every file of the folder is covered by the manifest, or the save fails
            raise OSError(f"unexpected files {unlisted} in the checkpoint folder")
        fsync_path(tmp)
        # Saved again (a resumed run, a requeued epoch's save, a changed strategy): the step's complete copy
        # is parked, not removed, and stays resumable until the new one is published.
        park(path)
        os.rename(tmp, path)
        fsync_path(folder)
        digest = checksum_bytes(json.dumps(files, sort_keys=True).encode())
        manifest = Manifest(
            path,
            digest,
            sum(size for _, size in files.values()),
            payload["epoch"],
            payload["step_in_epoch"],
            payload["global_step"],
            payload.get("metrics", {}),
            files,
        )
        publish(manifest)
        unpark(path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(path, exc) from None
    except WriteError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def write_sharded(
    path: Path, payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, *, is_main: bool
) -> Manifest | None:
    """Write the sharded checkpoint `path` (a folder). Collective: every rank writes its shards. Returns the
    manifest on rank 0 (None elsewhere). Raises UserError alike on every rank for a failure met by all
    (no folder, a full disk during the shards), or on rank 0 alone after the last collective."""
    from torch.distributed.checkpoint.api import CheckpointException

    tmp = _fresh_folder(path, is_main)
    writer, mine, problem = _writer(tmp), None, None
    try:
        _dcp_save(_state(model, optimizer), writer)
        mine = _own_files(tmp, writer)
    except CheckpointException as exc:  # a BaseException (not caught by `except Exception`); on every rank
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.raise_agreed(_failed_write(tmp, exc))
    except OSError as exc:  # this rank's shard did not check out: every rank learns it below
        problem = _failed_write(tmp, exc)
    every = dist.all_gather_object((mine, problem))
    failed = next((p for _, p in every if p is not None), None)
    if failed is not None:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.raise_agreed(failed)
    return _complete(tmp, path, payload, [files for files, _ in every]) if is_main else None


def write_sharded_in_background(
    path: Path,
    payload: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    is_main: bool,
    background: Any,
    then: Callable[[Manifest], None],
    owned: set[int] | None = None,
) -> None:
    """write_sharded, but returning once the shards are staged in CPU memory; DCP's planning and writing,
    the checksums and the rename run in the writer threads (dcp.save from the staged copy: what DCP's
    async_save does, but in the low-priority writer thread rather than one async_save starts at the
    training thread's priority), their collectives on the writers' own group. `then(manifest)` runs on
    rank 0 after the checkpoint is complete (pruning, best links)."""

    tmp = _fresh_folder(path, is_main)
    # Training goes on changing the live tensors; the copy of those in `owned` is left to the writer thread.
    staged = background.shard_staging.stage(_state(model, optimizer), owned)
    payload = background.staging.stage(payload) if is_main else None

    def finish() -> None:
        writer, mine, problem = _writer(tmp), None, None
        try:
            _dcp_save(staged, writer, process_group=background.group)
            mine = _own_files(tmp, writer)
        except BaseException as exc:  # noqa: BLE001 (DCP's CheckpointException is a BaseException)
            problem = _failed_write(tmp, exc)
        every = background.all_gather((mine, problem))  # every rank's writer, in the same order
        failed = next((p for _, p in every if p is not None), None)
        if failed is not None:
            if is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            dist.raise_agreed(failed)
        if is_main:
            then(_complete(tmp, path, payload, [files for files, _ in every]))

    background.submit(finish)


# ------------------------------------------------------------------------------------------------ load

# What DCP's .metadata may hold: its own metadata classes, tensor properties, paths. Anything else (a
# pickle that would import or call other code) is refused before it runs.
_SAFE = {
    "torch.distributed.checkpoint.metadata": None,  # every class defined there
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _SAFE.get(module, set())
        found = super().find_class(module, name) if module in _SAFE else None
        if module == "torch" and isinstance(found, torch.dtype):
            return found
        if found is not None and (
            allowed is None and isinstance(found, type) and found.__module__ == module or allowed and name in allowed
        ):
            return found
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def _safe_reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """DCP's file reader, reading .metadata through the allow-list (shards are read weights-only by DCP)."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(self.path) / ".metadata", "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except pickle.UnpicklingError as exc:
                    raise CheckpointError(
                        f"checkpoint {path} was refused: its .metadata holds pickled objects other than DCP's "
                        f"metadata, which could run code when loaded ({exc})",
                        "only load checkpoints you trust; distrain never unpickles arbitrary objects",
                    ) from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _dcp_load(path: Path, state: dict[str, Any], *, rebuild: str | None = None) -> None:
    """dcp.load into `state` (collective); `rebuild`: fill the empty `state` with that top-level key's
    entries as saved, whole, in this process alone (no collective; what DCP's own dcp_to_torch_save does)."""
    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    try:
        if rebuild is None:
            if tdist.is_available() and tdist.is_initialized():
                dcp.load(state, storage_reader=_safe_reader(path))
            else:  # DCP's one-process path, as in _dcp_save
                _load_state_dict(state, storage_reader=_safe_reader(path), no_dist=True)
        else:
            _load_state_dict(
                state,
                storage_reader=_safe_reader(path),
                no_dist=True,
                planner=_EmptyStateDictLoadPlanner(keys={rebuild}),
            )
    except CheckpointException as exc:  # a BaseException; raised on every rank alike
        inner = [getattr(f, "exc", f) for f in getattr(exc, "failures", {}).values()]
        refused = next((e for e in inner if isinstance(e, CheckpointError)), None)
        if refused is not None:
            raise refused from None
        reason = str(inner[0] if inner else exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's model or optimizer: "
            f"{reason[0] if reason else type(exc).__name__}",
            "resume with the config the checkpoint was trained with (distrain inspect "
            "shows it), or checkpoint.resume=never",
        ) from None


def read_sharded(path: Path, map_location: str | torch.device = "cpu", *, model_weights: bool = True) -> dict[str, Any]:
    """A sharded checkpoint's state.pt; with `model_weights`, also "model": the whole model's weights, read
    from the shards by this process alone (no collective: for evaluation, prediction and export)."""
    payload = torch_load(path / STATE_FILE, map_location)
    if not isinstance(payload, dict) or "global_step" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a distrain checkpoint ({STATE_FILE} has no progress)")
    if model_weights:
        # The state dict is rebuilt from the shards' index: no model needs to exist to read it.
        full: dict[str, Any] = {}
        _dcp_load(path, full, rebuild="model")
        payload["model"] = {k: v.to(map_location) for k, v in full["model"].items()}
    return payload


def model_numel(path: Path) -> int:
    """The model's parameter and buffer count, from the shards' index alone (nothing is read)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = _safe_reader(path).read_metadata()
    return sum(
        math.prod(entry.size)
        for key, entry in metadata.state_dict_metadata.items()
        if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)
    )


def load_sharded_into(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Resume: read `path`'s shards into the model (and optimizer) as this run holds them, sharded or
    whole, on any number of ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        # Allocates the optimizer's state first (a zero step), so there are tensors to read into.
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    _dcp_load(path, state)
    # Model, then optimizer, in two calls (one combined call with uneven inputs can hang).
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_whole_into_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None, payload: dict[str, Any]) -> None:
    """A .pt checkpoint (whole state dicts, DDP's) into a sharded model: every rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, payload["model"], options=whole)
    if optimizer is None:
        return
    # A .pt's optimizer state is keyed by parameter index; the sharded loader wants parameter names.
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = payload["optimizer"]
    by_name = {
        "state": {order[int(i)]: value for i, value in saved["state"].items()},
        "param_groups": [dict(g, params=[order[int(i)] for i in g["params"]]) for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=whole)
