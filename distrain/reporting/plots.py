"""Curves per epoch, as the tutorials draw them: train vs val vs test, one PNG per metric (loss,
accuracy, and every configured metric).

    distrain plot runs/xor                      # -> runs/xor/plots/loss.png, accuracy.png, ...
    distrain plot runs/a runs/b --out compare/  # several runs overlaid
"""

from __future__ import annotations

import io
from pathlib import Path

from distrain.atomic import atomic_write_bytes
from distrain.errors import UserError, WriteError
from distrain.reporting.history import read_metrics


def plot_runs(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write <metric>.png into out_dir for each metric, one line per run and split. Returns the paths."""
    # A Figure of its own, not pyplot: no display needed (SLURM nodes, CI), the user's pyplot backend and
    # open figures (a notebook calling distrain.fit) are left alone, and pyplot's import (0.8 s) is skipped.
    from matplotlib.figure import Figure

    series = {}
    for run in run_dirs:
        if not (Path(run) / "metrics.jsonl").is_file():
            raise UserError(f"{run} has no metrics.jsonl", "pass run directories of distrain runs")
        series[Path(run)] = read_metrics(run)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(out_dir, exc) from None
    from distrain.reporting.history import RECORD_KEYS

    metrics: list[str] = []
    for records in series.values():
        for r in records:
            metrics += [
                k for k, v in r.items() if k not in RECORD_KEYS and k not in metrics and isinstance(v, (int, float))
            ]
    paths = []
    for metric in metrics:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for run, records in series.items():
            prefix = f"{run.name} " if len(series) > 1 else ""
            for split, style in (("train", "o-"), ("val", "s-."), ("test", "^--")):
                points = [(r["epoch"], r[metric]) for r in records if r["split"] == split and metric in r]
                if points:
                    ax.plot(*zip(*points), style, markersize=3, label=f"{prefix}{split}")
        ax.set_title(", ".join(run.name for run in series) + f": {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=100)
        atomic_write_bytes(path, image.getvalue())  # a full disk leaves the previous plot, not half of one
        paths.append(path)
    return paths
