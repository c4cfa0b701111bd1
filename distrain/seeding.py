"""Seeding and determinism: Python, NumPy and torch (CPU and CUDA), and DataLoader workers.

Every derived seed comes from `mix_seed` (one recipe): a rank's generator stream (`rank_seed`), a rank's
DataLoader worker seeds (`loader_generator`), an exact-mode chunk's generators (strategies/exact.py).
Low in the package: data, strategies and the loop all draw from it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every generator the training touches. Called with the same seed on every rank before the model
    is built, so it is initialised identically everywhere (DDP would broadcast rank 0's weights anyway);
    then with `rank_seed` for training."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


_SEED_MOD = 2**63 - 1


def mix_seed(seed: int, step: int, index: int, salt: int) -> int:
    """The one recipe for a derived seed: ((seed * 1_000_003 + step) * salt + index) mod 2^63 - 1. Each use
    has its own `salt`, so that its streams differ from the others' for the same (seed, step, index)."""
    return ((seed * 1_000_003 + step) * salt + index) % _SEED_MOD


def rank_seed(seed: int, rank: int, global_step: int = 0) -> int:
    """The seed of rank `rank`'s own generator stream from global step `global_step` on. Each rank draws
    its own dropout masks (and any randomness of a model or a step): the same stream on every rank would
    give rank 1's samples rank 0's masks, neither a 1-process run's nor independent ones."""
    return mix_seed(seed, global_step, rank, salt=65_599)


def configure_determinism(cudnn_deterministic: bool, deterministic_algorithms: bool) -> None:
    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = not cudnn_deterministic
    if deterministic_algorithms:
        # cuBLAS needs a fixed workspace to be deterministic; it reads this variable when it starts,
        # so it is set here (at training start), never at import.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def loader_generator(seed: int, rank: int) -> torch.Generator:
    """The generator a rank's DataLoader draws its worker base seed from: distinct per rank, and a new
    draw every epoch (workers are re-created each epoch), so worker seeds differ by rank, worker and epoch."""
    return torch.Generator().manual_seed(mix_seed(seed, rank, 0, salt=1))


WORKER_HOOKS: list = []
"""Functions called with the worker id in each DataLoader worker after its seeding: the hang watchdog's
stack dump on request (distrain/launch/watchdog.py) while it watches."""


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: torch already seeds each worker with base_seed + worker_id; give Python's
    and NumPy's generators (used by many transforms) that same per-worker seed."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    for hook in WORKER_HOOKS:
        hook(worker_id)
