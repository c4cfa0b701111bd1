"""distrain: plain DDP done right. One YAML config trains the same model in one process, under torchrun,
and under SLURM's srun, with exact metrics and exact resume. See README.md; `distrain --help`.

Nothing happens at import: no environment reads or writes, no torch import.
"""

__version__ = "0.1.0"
