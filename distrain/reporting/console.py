"""What each rank prints: rank 0 tells the story; the others speak only for warnings and errors."""

from __future__ import annotations

import logging
import sys


def setup_logging(rank: int) -> None:
    """The `distrain` logger of this process: INFO to stdout on rank 0; WARNING and up to stderr, prefixed
    with the rank, elsewhere."""
    handler = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    root = logging.getLogger("distrain")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False
