"""data.seed_samples (distrain/data/seeded.py): randomness drawn inside a data set's __getitem__ is the
same for a sample whoever reads it (the main process or a worker, in any batch, on any rank), differs by
epoch and sample, and a read in the main process leaves the process's generators as they were. The
end-to-end proof (a ResNet-18 with RandomResizedCrop and RandomHorizontalFlip in 2 workers per rank,
bitwise on 1, 2 and 4 processes) is in test_exact.py."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from distrain.data.seeded import Keyed, SeededSamples


class Draws(Dataset):
    """Each sample: one draw from each of torch's, Python's and NumPy's generators, and its index."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> torch.Tensor:
        draws = [torch.rand(()).item(), random.random(), float(np.random.rand())]
        return torch.tensor([*draws, index], dtype=torch.float64)


ONE_PROCESS = [list(range(start, start + 8)) for start in range(0, 40, 8)]
# Rank 1 of 2's odd positions in batches of 4, then rank 0's even ones as one batch: other batches, other order
OTHER_RANKS = [list(range(1, 40, 2))[i : i + 4] for i in range(0, 20, 4)] + [list(range(38, -1, -2))]


def _read(batches: list[list[int]], epoch: int, workers: int, seeded: bool = True) -> dict[int, list[float]]:
    """Each sample's draws, by index, read through a DataLoader as distrain's loader wraps the data set."""
    dataset, sampler = (SeededSamples(Draws(), seed=3), Keyed(batches, lambda: epoch)) if seeded else (Draws(), batches)
    # A generator of its own, as distrain's loader has (else the DataLoader draws its base seed from torch's)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, generator=torch.Generator().manual_seed(0))
    rows = torch.cat(list(loader))
    return {int(row[3]): row[:3].tolist() for row in rows}


def test_a_sample_draws_the_same_whoever_reads_it_and_anew_each_epoch():
    one = _read(ONE_PROCESS, epoch=0, workers=0)
    assert len(one) == 40
    assert _read(OTHER_RANKS, epoch=0, workers=2) == one  # 2 workers, other batches and order
    assert len({tuple(draws) for draws in one.values()}) == 40  # each sample its own draws
    next_epoch = _read(ONE_PROCESS, epoch=1, workers=2)
    assert all(next_epoch[i] != one[i] for i in range(40))
    # The negative control: unseeded, 2 workers draw other values than the main process does
    torch.manual_seed(0)
    plain = _read(ONE_PROCESS, epoch=0, workers=0, seeded=False)
    assert _read(OTHER_RANKS, epoch=0, workers=2, seeded=False) != plain


def test_a_read_in_the_main_process_leaves_the_generators_as_they_were():
    def draws() -> tuple:
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    def seed_all() -> None:
        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)

    seed_all()
    expected = draws()
    seed_all()
    _read(ONE_PROCESS, epoch=0, workers=0)
    assert draws() == expected
