"""Which samples of a sharded stream form each global batch: the same on any number of ranks and workers.

    plan = StreamPlan(sizes, lanes=12, global_batch_size=128, seed=0, shuffle=True)
    plan.num_steps                       # global batches in an epoch (the last may be short)
    plan.lane_counts(epoch, lane)        # samples lane `lane` gives to each step of the epoch
    plan.lane_pieces(epoch, lane, a, b)  # (shard, start, stop) runs holding the lane's samples a..b

The unit of reading is the *lane*, not the rank (Mosaic Streaming's "canonical nodes", without its file
format): an epoch's shards are put in a seeded order (seed + epoch) and dealt round-robin to `lanes` lanes;
each lane reads its shards one after the other. The epoch's global order takes one sample from each lane in
turn, skipping lanes that have run dry, and global batch k is positions [kB, (k+1)B) of that order. None of
this depends on the world size or the number of DataLoader workers, so:
- every sample is in exactly one global batch per epoch; no padding, no sample dropped (the last batch is
  short, as in the map-style path);
- a run resumed on another number of processes continues the same global order (progress is counted in
  global batches, and a lane's position at step k follows from the plan: nothing else is saved);
- lane c is read by rank c mod W, and by worker (c // W) mod N of that rank: a reader opens only its own
  lanes' shards, and seeks to the lane's position on a mid-epoch resume.
A rank's share of a step is its lanes' samples in lane order; shares differ in size when lanes do (the loss
is normalised by the global batch size, as for the uneven last batch of the map-style path).
"""

from __future__ import annotations

import math

import numpy as np


class StreamPlan:
    def __init__(
        self, sizes: list[int], *, lanes: int, global_batch_size: int, seed: int, shuffle: bool, shuffle_window: int = 0
    ):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.shuffle_window = shuffle_window  # read by the lanes' readers (data/streams.py)
        self.lanes, self.global_batch_size, self.seed, self.shuffle = lanes, global_batch_size, seed, shuffle
        self.total = int(self.sizes.sum())
        self.num_steps = math.ceil(self.total / global_batch_size)
        self._order: tuple[int, np.ndarray] = (-1, np.arange(0))
        self._counts: dict[tuple[int, int], np.ndarray] = {}

    def global_size(self, step: int) -> int:
        return min(self.global_batch_size, self.total - step * self.global_batch_size)

    def shard_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.sizes))
        if self._order[0] != epoch:  # asked for at every step: drawn once an epoch
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.sizes)))
        return self._order[1]

    def lane_shards(self, epoch: int, lane: int) -> np.ndarray:
        """The shards lane `lane` reads this epoch, in order (indices into the shard list)."""
        return self.shard_order(epoch)[lane :: self.lanes]

    def lane_lengths(self, epoch: int) -> np.ndarray:
        return np.array([self.sizes[self.lane_shards(epoch, c)].sum() for c in range(self.lanes)], dtype=np.int64)

    def lane_positions(self, epoch: int, lane: int) -> np.ndarray:
        """The global position (in the epoch's order) of each of lane `lane`'s samples.

        Sample t of lane c comes after every lane's first t samples (min(m_c', t) each) and after sample t
        of the lanes before c that still have one: pos = sum_c' min(m_c', t) + #{c' < c : m_c' > t}."""
        return _positions(tuple(self.lane_lengths(epoch).tolist()), lane)

    def lane_counts(self, epoch: int, lane: int) -> np.ndarray:
        """How many of lane `lane`'s samples each step of the epoch takes (length num_steps). Kept for the
        epoch in progress only: the positions behind it are as long as the lane (not kept at all)."""
        if (epoch, lane) not in self._counts:
            if self._counts and next(iter(self._counts))[0] != epoch:
                self._counts.clear()
            bounds = np.arange(self.num_steps + 1, dtype=np.int64) * self.global_batch_size
            self._counts[epoch, lane] = np.diff(np.searchsorted(self.lane_positions(epoch, lane), bounds))
        return self._counts[epoch, lane]

    def lane_pieces(self, epoch: int, lane: int, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(shard index, start, stop) runs that hold the lane's samples [start, stop), in order."""
        shards = self.lane_shards(epoch, lane)
        ends = np.cumsum(self.sizes[shards])
        first = int(np.searchsorted(ends, start, side="right"))  # the shard holding sample `start`
        pieces = []
        for i in range(first, len(shards)):
            offset = int(ends[i] - self.sizes[shards[i]])
            if offset >= stop:
                break
            a, b = max(start - offset, 0), min(stop, int(ends[i])) - offset
            if a < b:
                pieces.append((int(shards[i]), a, b))
        return pieces


def _positions(lengths: tuple[int, ...], lane: int) -> np.ndarray:
    m = np.asarray(lengths, dtype=np.int64)
    t = np.arange(m[lane], dtype=np.int64)
    ordered = np.sort(m)
    prefix = np.concatenate([[0], np.cumsum(ordered)])
    shorter = np.searchsorted(ordered, t, side="left")  # lanes with fewer than t samples: all of theirs
    before = np.sort(m[:lane])
    earlier_alive = lane - np.searchsorted(before, t, side="right")  # lanes before `lane` with > t samples
    return prefix[shorter] + t * (len(m) - shorter) + earlier_alive


def default_lanes(num_shards: int) -> int:
    """One lane per shard, up to 64 (each reader keeps its lanes' shards open at once)."""
    return max(1, min(num_shards, 64))
