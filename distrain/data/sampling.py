"""Which samples does this rank see, and in which step?

Training: `GlobalBatchSampler` is a `DistributedSampler` (same seed + epoch permutation, same `set_epoch`)
that shards *per global batch*: step k of an epoch uses the global batch `perm[k*B:(k+1)*B]`, and rank r
takes every world_size-th element of it, starting at r. For every full batch that is exactly the element
DistributedSampler would hand rank r. Two things differ, both so that results do not depend on the number
of processes:

- no padding: DistributedSampler repeats samples to make the set divisible by world_size, so a 2-rank
  epoch would train on duplicates that a 1-rank epoch does not see; here every sample is used once;
- the steps are global: the number of steps per epoch, the set of samples in each step and the position
  inside the epoch are the same on any number of ranks. That is what lets a run resume mid-epoch, on the
  same or on a different number of processes, at the next global batch.

A global batch may not split evenly over the ranks (the last one, or every one when the world size does
not divide data.global_batch_size: the first ranks then take one sample more); the loss is therefore
normalised by the *global* batch size (see distrain.loop.objective.Objective.step_loss), so the averaged
DDP gradient is the gradient of the global mean.

Evaluation: `eval_batch_ranges` cuts the test set into fixed batches of eval_batch_size, the same on any
number of ranks, and gives each rank a contiguous run of whole batches (detectron2's InferenceSampler
idea, without padding). Every sample is evaluated exactly once and in the same batch as in one process.
With data.streams (a recurrent model's streams, carried from batch to batch) each rank instead takes the
same positions of every batch, rank::world_size, as in training without shuffling: rank r's part of
batch b+1 continues its part of batch b.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler


class GlobalBatchSampler(DistributedSampler):
    """DistributedSampler's permutation, sharded per global batch, without padding (see module docstring)."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int,
        rank: int,
        global_batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.global_batch_size = global_batch_size
        self.dataset_size = len(dataset)  # type: ignore[arg-type]
        self.start_step = 0

    @property
    def num_steps(self) -> int:
        """Optimizer steps per epoch, the same on every rank and for any number of ranks."""
        return math.ceil(self.dataset_size / self.global_batch_size)

    def global_size(self, step: int) -> int:
        """Number of samples in global batch `step` (all ranks together)."""
        return min(self.global_batch_size, self.dataset_size - step * self.global_batch_size)

    def set_start_step(self, step: int) -> None:
        """Skip the first `step` global batches of the current epoch (mid-epoch resume), until set_epoch."""
        if not 0 <= step <= self.num_steps:
            raise ValueError(f"start step {step} is outside [0, {self.num_steps}]")
        self.start_step = step

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start_step = 0

    def order(self) -> torch.Tensor:
        """This epoch's order of the whole data set: DistributedSampler's, before its padding."""
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def rank_batches(self) -> Iterator[tuple[int, list[int]]]:
        """(step, this rank's indices) for each remaining step of the epoch; a share may be empty."""
        order = self.order().tolist()
        size = self.global_batch_size
        for step in range(self.start_step, self.num_steps):
            yield step, order[step * size : (step + 1) * size][self.rank :: self.num_replicas]

    def rank_epoch(self) -> tuple[list[int], torch.Tensor, list[int]]:
        """The remaining steps of the epoch at once: (steps, this rank's indices of all of them in order,
        the share size of each step). The same indices as `rank_batches`, built without Python lists."""
        order = self.order()
        size, world = self.global_batch_size, self.num_replicas
        full = self.dataset_size // size  # steps whose global batch is complete
        first = min(self.start_step, full)
        # Full global batches as rows: this rank's share of each is every world-th column from `rank` (one
        # sample more on the first size % world ranks when the world size does not divide the batch).
        shares = [order[first * size : full * size].view(-1, size)[:, self.rank :: world].reshape(-1)]
        sizes = [len(range(self.rank, size, world))] * (full - first)
        if full < self.num_steps and self.start_step <= full:
            last = order[full * size :][self.rank :: world]
            shares.append(last)
            sizes.append(len(last))
        index = shares[0] if len(shares) == 1 else torch.cat(shares)  # cat would copy even one tensor
        return list(range(self.start_step, self.num_steps)), index, sizes

    def __iter__(self) -> Iterator[int]:
        for _, indices in self.rank_batches():
            yield from indices

    def __len__(self) -> int:
        return sum(len(indices) for _, indices in self.rank_batches())


def eval_batch_ranges(
    num_samples: int, eval_batch_size: int, rank: int, world_size: int, streams: bool = False
) -> list[tuple[int, slice]]:
    """(batch index, the slice of the data set) of the evaluation batches this rank evaluates: a contiguous
    run of whole batches; with `streams`, positions rank::world_size of every batch (empty parts left out)."""
    num_batches = math.ceil(num_samples / eval_batch_size)
    bounds = [(b, b * eval_batch_size, min(num_samples, (b + 1) * eval_batch_size)) for b in range(num_batches)]
    if streams:
        parts = [(b, slice(start + rank, end, world_size)) for b, start, end in bounds]
        return [(b, part) for b, part in parts if part.start < part.stop]
    first = rank * num_batches // world_size
    last = (rank + 1) * num_batches // world_size
    return [(b, slice(start, end)) for b, start, end in bounds[first:last]]
