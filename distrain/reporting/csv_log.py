"""CSV: <run.dir>/scalars.csv, one row per logged step, one column per scalar name.

    log:
      loggers: [csv]

    step,train/step_loss,lr,...,epoch,train/loss,test/loss,...
    50,0.412,0.1,...
    100,,,,...,4,0.40,0.41,...

The columns are `step` and every name logged so far, in the order first seen; a row leaves the names it
does not have empty (step rows and epoch rows hold different names). A new name rewrites the file with
the wider header (atomically); rows are otherwise appended and flushed. On resume, rows of steps after
the checkpoint are dropped: the resumed run writes them again. (metrics.jsonl keeps the per-epoch
records; this file is for spreadsheets and pandas: `pandas.read_csv(run_dir / "scalars.csv")`.)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from distrain.atomic import atomic_write_bytes
from distrain.errors import WriteError


class CSVLogger:
    """<run.dir>/scalars.csv: a row per logged step, a column per scalar name."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        self.path = Path(run_dir) / "scalars.csv"
        self.columns: list[str] = ["step"]
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or ["step"])
                rows = list(reader)
            kept = [row for row in rows if _step_of(row) <= start_step]
            if len(kept) != len(rows):
                self._rewrite(kept)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        row = {"step": str(step), **{name: repr(float(value)) for name, value in values.items()}}
        new = [name for name in row if name not in self.columns]
        if new or not self.path.exists():
            self.columns += new
            self._rewrite([*self._rows(), row])
            return
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)
        except OSError as exc:
            raise WriteError(self.path, exc) from None

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path, out.getvalue().encode())  # never a half-rewritten file


def _step_of(row: dict[str, str]) -> float:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return float("inf")  # a row cut short by a kill counts as not written
