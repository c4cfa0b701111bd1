"""The per-global-batch sampler and the exact evaluation shards."""

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from distrain.data.sampling import GlobalBatchSampler, eval_batch_ranges


def data(n):
    return TensorDataset(torch.arange(n))


@pytest.mark.parametrize("world", [1, 2, 4])
def test_full_batches_match_distributed_sampler(world):
    # 512 samples, global batch 64: every batch is full, so each rank must see exactly the indices
    # torch's DistributedSampler gives it, in the same order.
    ds, per_rank = data(512), 64 // world
    for rank in range(world):
        ours = GlobalBatchSampler(ds, num_replicas=world, rank=rank, global_batch_size=64, seed=3)
        theirs = DistributedSampler(ds, num_replicas=world, rank=rank, seed=3)
        for epoch in (0, 1):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)
        assert all(len(b) == per_rank for _, b in ours.rank_batches())


@pytest.mark.parametrize("n,world", [(2500, 2), (2501, 2), (101, 4), (5, 4)])
def test_every_sample_once_per_epoch_and_steps_are_global(n, world):
    samplers = [
        GlobalBatchSampler(data(n), num_replicas=world, rank=r, global_batch_size=32, seed=1) for r in range(world)
    ]
    one = GlobalBatchSampler(data(n), num_replicas=1, rank=0, global_batch_size=32, seed=1)
    seen = sorted(i for s in samplers for i in s)
    assert seen == list(range(n))  # no padding, no duplicates
    # Step k holds the same samples on any number of ranks.
    by_step = [dict(s.rank_batches()) for s in samplers]
    for step, batch in one.rank_batches():
        assert sorted(i for b in by_step for i in b[step]) == sorted(batch)
        assert one.global_size(step) == len(batch)


def test_epochs_shuffle_differently_and_resume_skips_steps():
    s = GlobalBatchSampler(data(100), num_replicas=2, rank=1, global_batch_size=10, seed=0)
    s.set_epoch(0)
    e0 = list(s.rank_batches())
    s.set_epoch(1)
    assert list(s.rank_batches()) != e0
    s.set_epoch(0)
    s.set_start_step(4)
    assert list(s.rank_batches()) == e0[4:]


def test_a_global_batch_the_world_does_not_divide_is_dealt_whole():
    """97 samples in one global batch of 97 on 2 and 3 ranks: every sample once per epoch, the first ranks
    one more, and rank_epoch (the tensor path) agrees with rank_batches (the DataLoader path)."""
    for world in (2, 3):
        seen = []
        for rank in range(world):
            s = GlobalBatchSampler(data(97 * 3), num_replicas=world, rank=rank, global_batch_size=97, seed=1)
            s.set_epoch(0)
            batches = list(s.rank_batches())
            steps, index, sizes = s.rank_epoch()
            assert index.tolist() == [i for _, b in batches for i in b] and sizes == [len(b) for _, b in batches]
            assert sizes == [len(range(rank, 97, world))] * 3
            seen += index.tolist()
        assert sorted(seen) == list(range(97 * 3))


def test_eval_streams_give_each_rank_the_same_positions_of_every_batch():
    ranges = {rank: eval_batch_ranges(10, 4, rank, 2, streams=True) for rank in range(2)}
    assert ranges[0] == [(0, slice(0, 4, 2)), (1, slice(4, 8, 2)), (2, slice(8, 10, 2))]
    assert ranges[1] == [(0, slice(1, 4, 2)), (1, slice(5, 8, 2)), (2, slice(9, 10, 2))]
    assert eval_batch_ranges(5, 4, 2, 3, streams=True) == [(0, slice(2, 4, 3))]  # batch 1 has no third position


@pytest.mark.parametrize("n,bs,world", [(501, 64, 2), (501, 64, 3), (7, 64, 4), (1000, 10, 7)])
def test_eval_ranges_cover_each_sample_once_in_fixed_batches(n, bs, world):
    ranges = [r for rank in range(world) for r in eval_batch_ranges(n, bs, rank, world)]
    assert [r[0] for r in ranges] == list(range(len(ranges)))
    assert ranges == eval_batch_ranges(n, bs, 0, 1)  # the same batches as one process
    assert sum(part.stop - part.start for _, part in ranges) == n


@pytest.mark.parametrize(
    "n,world,start",
    [(2500, 2, 0), (2501, 2, 0), (2501, 2, 78), (2501, 2, 79), (101, 4, 2), (5, 4, 0), (96, 4, 3), (64, 2, 1)],
)
def test_rank_epoch_is_rank_batches_at_once(n, world, start):
    # The tensor fast path gathers a whole epoch from rank_epoch(); it must be exactly rank_batches().
    for rank in range(world):
        s = GlobalBatchSampler(data(n), num_replicas=world, rank=rank, global_batch_size=32, seed=5)
        s.set_epoch(2)
        s.set_start_step(min(start, s.num_steps))
        steps, index, sizes = s.rank_epoch()
        batches = list(s.rank_batches())
        assert steps == [step for step, _ in batches]
        assert sizes == [len(b) for _, b in batches]
        assert index.tolist() == [i for _, b in batches for i in b]
