"""A step saved again keeps a complete copy at every instant: its previous copy is parked until the new one
is published.

When is a step saved twice? A resumed run's save of its resume step (a signal right after resuming), an
epoch's save after a requeue stopped it at its last step, a best link made again, a changed strategy (a
.pt, then a sharded folder, of the same step). Removing the old copy before the new one is in place would
leave a window in which a kill loses that step; so, with the new copy complete under a temporary name:

    park(path)       the old copy moves whole to its parked name: manifest first (naming the parked data),
                     then the data, then the old manifest goes
    os.rename(tmp, path); publish(...)
    unpark(path)     the parked copy goes, manifest first

    step-00000060.pt / step-00000060/   ->   step-00000060-prev.pt / step-00000060-prev/
    step-00000060.json                  ->   step-00000060-prev.json
    best-step-00000060.pt               ->   best-step-00000060-prev.pt (and its manifest)

So one of the two copies is complete under its own manifest at every instant, and
distrain.checkpoint.store.find_resumable falls back to the parked one when the step's own is incomplete.
Renames, not copies: parking costs no I/O whatever the checkpoint's size.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from distrain.atomic import atomic_write_bytes, fsync_path
from distrain.checkpoint.files import Manifest, remove_checkpoint, remove_data

PREV = "-prev"


def parked(path: Path) -> Path:
    """Where `park` keeps a checkpoint's previous copy: step-N.pt -> step-N-prev.pt, step-N/ -> step-N-prev/,
    best-step-N.pt -> best-step-N-prev.pt (manifest: step-N-prev.json)."""
    return path.with_name(f"{path.stem}{PREV}{path.suffix}")


def is_parked(path: Path) -> bool:
    return path.name.removesuffix(".pt").removesuffix(".json").endswith(PREV)


def forms(path: Path) -> tuple[Path, Path]:
    """A step's two forms, file and folder (the strategy may change between saves); one manifest name."""
    return path.with_suffix(".pt"), path.with_suffix("")


def described(path: Path) -> Manifest | None:
    """Manifest.read, its path the form the manifest describes (both forms share the manifest's name)."""
    manifest = Manifest.read(path)
    if manifest is None:
        return None
    return dataclasses.replace(manifest, path=forms(path)[0 if manifest.files is None else 1])


def park(path: Path) -> None:
    """Called with the new checkpoint complete under a temporary name, right before it is renamed to `path`.
    The step's complete copy, if it has one, is moved whole to its parked name (see the module docstring).
    Anything else under the step's names is an unfinished save's leftover, removed. Raises OSError."""
    old = described(path)
    if old is not None and old.problem(hashes=False):
        old = None  # its data is gone or cut short (a kill earlier in this function): not the copy to keep
    for form in forms(path):
        if old is None or form != old.path:
            remove_data(form)
    if old is None:
        path.with_suffix(".json").unlink(missing_ok=True)
        return  # a parked copy from a killed save, if any, stays: it may be the step's only complete one
    aside = parked(old.path)
    for form in forms(aside):  # an older parked copy (a kill after a publish): superseded by `old`
        remove_checkpoint(form)
    atomic_write_bytes(aside.with_suffix(".json"), dataclasses.replace(old, path=aside).to_json().encode())
    os.rename(old.path, aside)
    fsync_path(path.parent)
    path.with_suffix(".json").unlink(missing_ok=True)  # never a stale manifest beside the new data


def unpark(path: Path) -> None:
    """The new copy of `path` is published: the parked previous one, if any, goes (manifest first)."""
    for form in forms(path):
        remove_checkpoint(parked(form))
