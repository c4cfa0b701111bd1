"""Loss and accuracy curves per epoch, as the tutorials draw them: train vs test, one PNG each.

    distrain plot runs/xor                      # -> runs/xor/plots/loss.png, accuracy.png
    distrain plot runs/a runs/b --out compare/  # several runs overlaid
"""

from __future__ import annotations

from pathlib import Path

from distrain.errors import UserError
from distrain.metrics import read_metrics


def plot_runs(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write loss.png and accuracy.png into out_dir, one line per run and split. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (SLURM nodes, CI)
    import matplotlib.pyplot as plt

    series = {}
    for run in run_dirs:
        if not (Path(run) / "metrics.jsonl").is_file():
            raise UserError(f"{run} has no metrics.jsonl", "pass run directories of distrain runs")
        series[Path(run)] = read_metrics(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, label in (("loss", "loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for run, records in series.items():
            prefix = f"{run.name} " if len(series) > 1 else ""
            for split, style in (("train", "-"), ("test", "--")):
                points = [(r["epoch"], r[metric]) for r in records if r["split"] == split]
                if points:
                    ax.plot(*zip(*points), style, label=f"{prefix}{split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
