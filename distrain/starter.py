"""`distrain init`: a script and a config of the user's own to edit, from the shipped XOR tutorial.

    distrain init [DIR] [--slurm] [--launch]
    writes into DIR (default: the current folder):
        train.py      from examples/xor_tutorial.py: its own nn.Module, Dataset, loss and metric, given to fit
        config.yaml   from examples/xor.yaml: only how to train (batch, optimizer, epochs, checkpoints)
        slurm/        with --slurm: the sbatch scripts (sbatch slurm/train.sbatch train.py config.yaml)
        launch/       with --launch: the launchers (torchrun, Accelerate, Kubernetes manifests, TorchX, Ray Train)

    python train.py config.yaml
    torchrun --standalone --nproc_per_node=2 train.py config.yaml

The files are the shipped tutorial's (distrain.examples), with the paths their comments and the run
directory name changed to the new ones; nothing that exists is overwritten.
"""

from __future__ import annotations

from pathlib import Path

from distrain.examples import copy_files, files

SCRIPT, CONFIG = "train.py", "config.yaml"
_SOURCES = {"examples/xor_tutorial.py": SCRIPT, "examples/xor.yaml": CONFIG}
# What the shipped files' own text says, and what it says in the user's folder.
_RENAMES = {"examples/xor_tutorial.py": SCRIPT, "examples/xor.yaml": CONFIG, "runs/examples/xor": "runs/train"}


def write_starter(dest: str | Path, *, slurm: bool = False, launch: bool = False) -> list[Path]:
    """Write train.py and config.yaml (and the SLURM and launch folders when asked) into `dest`; returns
    the files written. Refuses, writing nothing, if one of them exists."""
    dest = Path(dest)
    extra = [f for f in files() if (slurm and f.startswith("slurm/")) or (launch and f.startswith("launch/"))]
    written = copy_files({**_SOURCES, **{f: f for f in extra}}, dest)
    for path in written[: len(_SOURCES)]:
        text = path.read_text()
        for old, new in _RENAMES.items():
            text = text.replace(old, new)
        path.write_text(text)
    return written
