"""Where do metrics go? Rank 0 prints one line per epoch and appends to <run.dir>/metrics.jsonl.

metrics.jsonl holds one JSON object per split (train, val when there is one, test) and epoch:
    {"epoch": 3, "split": "train", "loss": 0.41, "accuracy": 0.93, "samples": 2500, "global_step": 80,
     "time_s": 0.2, "lr": 0.1}
    {"epoch": 3, "split": "test", "loss": 0.44, "accuracy": 0.91, "f1": 0.90, "samples": 500, ...}
(accuracy for classification losses; every configured metric on val and test, under its name).
Every line is flushed and fsynced when written: a kill loses no finished epoch. On resume, lines of epochs
that the checkpoint does not cover are dropped (they will be produced again), so each (epoch, split)
appears once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from distrain.atomic import atomic_write_bytes
from distrain.errors import WriteError

if TYPE_CHECKING:
    from distrain.reporting.figures import EpochMetrics

log = logging.getLogger("distrain")


# The keys of a record that are not metrics.
RECORD_KEYS = (
    "epoch",
    "split",
    "samples",
    "global_step",
    "time_s",
    "lr",
    "train_time_s",
    "samples_per_s",
    "peak_cuda_mem_gb",
    "skipped_steps",
)


class MetricsLog:
    def __init__(self, run_dir: str | Path, *, is_main: bool):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.is_main = is_main

    def drop_from_epoch(self, epoch: int) -> None:
        """Forget records of `epoch` and later (they were written after the checkpoint being resumed)."""
        if not self.is_main or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _epoch_of(line) < epoch]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())

    def log_epoch(
        self,
        epoch: int,
        global_step: int,
        splits: dict[str, EpochMetrics],
        time_s: float,
        lr: float,
        extra: dict[str, float] | None = None,
    ) -> list[dict]:
        """Print the epoch's line and append its records (one per split); returns the records."""
        found = records(epoch, global_step, splits, time_s, lr, extra)
        if not self.is_main:
            return found
        parts = [
            " ".join([split] + [f"{_SHORT.get(k, k)} {_fmt(v)}" for k, v in m.values.items()])
            for split, m in splits.items()
        ]
        log.info("epoch %d | %s | lr %.3g | %.2fs", epoch, " | ".join(parts), lr, time_s)
        append_whole(self.path, "".join(json.dumps(record) + "\n" for record in found).encode())
        return found


def records(
    epoch: int,
    global_step: int,
    splits: dict[str, EpochMetrics],
    time_s: float,
    lr: float,
    extra: dict[str, float] | None = None,
) -> list[dict]:
    """The epoch's metrics.jsonl records, one per split (see the module's docstring)."""
    found = []
    for split, m in splits.items():
        record = {
            "epoch": epoch,
            "split": split,
            **m.values,
            "samples": m.samples,
            "global_step": global_step,
            "time_s": round(time_s, 4),
        }
        if split == "train":
            record["lr"] = lr  # the learning rate at the start of the epoch
            record.update(extra or {})
        found.append(record)
    return found


def append_whole(path: Path, data: bytes) -> None:
    """Append `data` (whole lines) durably, or not at all: a failed write (disk full) is cut back off, so
    the file never ends in half a record."""
    with open(path, "ab") as f:
        start = f.tell()
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            try:
                f.truncate(start)
            except OSError:
                pass
            raise WriteError(path, exc) from None


_SHORT = {"accuracy": "acc"}


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _epoch_of(line: str) -> float:
    """The line's epoch; a line cut short by a kill counts as not written (infinitely late)."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
