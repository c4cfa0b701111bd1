"""Random augmentation drawn inside a data set, the same for a sample on any rank, worker or world size.

A transform in `__getitem__` (RandomResizedCrop, RandomHorizontalFlip, a NumPy jitter) draws from the
process's generators: in DataLoader workers, streams seeded per worker, so which crop a sample gets depends
on which worker of which rank reads it, and on the number of workers and processes. `SeededSamples` reads
the data set by (epoch, index) keys instead: before each sample torch's, Python's and NumPy's generators
are seeded from (seed, epoch, index), so the sample's draws depend on nothing else. Evaluation reads with
epoch -1. In the main process (no workers) the generators' states are put back after each sample, so the
model's own draws (dropout) are not touched. A transform that keeps a generator of its own (a
torch.Generator it was built with, numpy.random.default_rng) is not covered: seed it from
`distrain.data.seeded.sample_seed` yourself.

    DataLoader(SeededSamples(dataset, seed), batch_sampler=keyed(batches, epoch), ...)
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from distrain.seeding import mix_seed


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of sample `index` in epoch `epoch` (-1: evaluation)."""
    return mix_seed(seed, epoch + 1, index, salt=70_001)


class SeededSamples(Dataset):
    """`dataset` read by (epoch, index) keys, each sample under its own seed (see the module docstring)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        """A batch's samples (the DataLoader asks for a batch at once): each under its own seed; in the main
        process the generators are saved before the batch and put back after it."""
        if get_worker_info() is not None:  # a worker's generators are its own: just seed them
            return [self._read(epoch, index) for epoch, index in keys]
        saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            return [self._read(epoch, index) for epoch, index in keys]
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])

    def _read(self, epoch: int, index: int) -> Any:
        _seed_all(sample_seed(self.seed, epoch, index))
        return self.dataset[index]


def _seed_all(s: int) -> None:
    torch.default_generator.manual_seed(s)  # not torch.manual_seed: it seeds every CUDA device too
    random.seed(s)
    np.random.seed(s % 2**32)


class Keyed:
    """A batch sampler's index lists as (epoch, index) keys for SeededSamples; `epoch()` is read when each
    epoch's iteration starts (training: the sampler's epoch; evaluation: -1)."""

    def __init__(self, batches: Iterable[list[int]], epoch: Any):
        self.batches, self.epoch = batches, epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch()
        for indices in self.batches:
            yield [(epoch, i) for i in indices]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]
