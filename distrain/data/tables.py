"""Reading the users' CSV files, checked before training: an error names the file, the line and the column
(exit status 2), instead of a NumPy traceback or a NaN that only shows up as a diverging loss.

Used by the `csv` (tabular) and `csv_images` (annotations) data sets.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distrain.errors import ConfigError, UserError


@dataclass(frozen=True)
class Table:
    path: Path
    names: list[str] | None  # the header row, when there is one
    rows: list[list[str]]  # the data rows, cells stripped
    lines: list[int]  # the file line of each row (1-based), for messages

    def column_name(self, index: int) -> str:
        return repr(self.names[index]) if self.names else f"{index + 1}"

    def where(self, row: int, column: int | None = None) -> str:
        at = f"{self.path}, line {self.lines[row]}"
        return at if column is None else f"{at}, column {self.column_name(column)}"


def read_table(path: Path, *, header: bool, key: str = "data.args.path") -> Table:
    """Every row as long as the first, no empty cell; blank lines are skipped."""
    if not path.is_file():
        raise ConfigError(key, f"{path} does not exist", f"point {key} at the CSV file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            raw = [(number, [cell.strip() for cell in row]) for number, row in enumerate(csv.reader(f), 1)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable CSV text file ({exc})", f"{key} must name a CSV file") from None
    raw = [(n, row) for n, row in raw if any(row)]
    if not raw:
        raise UserError(f"{path} is empty", f"{key} must name a CSV file with data rows")
    names = raw[0][1] if header else None
    body = raw[1:] if header else raw
    if not body:
        raise UserError(
            f"{path} has a header row but no data rows",
            "add data rows, or set data.args.header=false if the first row is data",
        )
    width = len(raw[0][1])
    for number, row in body:
        if len(row) != width:
            raise UserError(
                f"{path}, line {number}: {len(row)} cells, the {'header' if header else 'first row'} has {width}",
                "every row needs one cell per column",
            )
        if "" in row:
            column = row.index("")
            label = repr(names[column]) if names else str(column + 1)
            raise UserError(
                f"{path}, line {number}, column {label}: the cell is empty",
                "fill in the missing value (or drop the row)",
            )
    return Table(path, names, [row for _, row in body], [n for n, _ in body])


def numbers(table: Table, columns: list[int]) -> np.ndarray:
    """The given columns as float64, [rows, columns]; a cell that is no number is named."""
    out = np.empty((len(table.rows), len(columns)), dtype=np.float64)
    for r, row in enumerate(table.rows):
        for c, column in enumerate(columns):
            try:
                out[r, c] = float(row[column])
            except ValueError:
                raise UserError(
                    f"{table.where(r, column)}: {row[column]!r} is not a number",
                    "every column but the label must hold numbers",
                ) from None
    if not np.isfinite(out).all():
        r, c = map(int, np.argwhere(~np.isfinite(out))[0])
        raise UserError(
            f"{table.where(r, columns[c])}: {table.rows[r][columns[c]]!r} is not a finite number",
            "replace NaN or Inf values before training",
        )
    return out


def class_indices(table: Table, column: int, classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels as 0..K-1: in the order of `classes` when given (a label outside them is named), else the
    distinct labels sorted (numbers numerically)."""
    labels = [row[column] for row in table.rows]
    if classes is None:
        classes = sorted(set(labels), key=lambda v: (_number(v), v))
    else:
        classes = [str(c) for c in classes]
        known = set(classes)
        for r, label in enumerate(labels):
            if label not in known:
                raise UserError(
                    f"{table.where(r, column)}: label {label!r} is not one of data.args.classes ({', '.join(classes)})",
                    "fix the label, or add it to data.args.classes",
                )
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in labels], dtype=np.int64), classes


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")
