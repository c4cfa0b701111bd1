"""Batch sources for streams: the same interface as data/batches.py (TrainBatches, EvalBatches), for data
sets read in order rather than by index.

- sharded (data/shards.py): dealt by lanes (data/stream_plan.py). Each reader (the rank itself, or each of
  its DataLoader workers) reads only its own lanes' shards and yields, for every step, its lanes' samples of
  that step (possibly none: it still yields, so that the DataLoader's round-robin over workers stays in step
  order). The rank puts the pieces in lane order: its share is the same whatever the number of workers.
- plain (an IterableDataset without shards): one reader reads it whole; several readers (data.split_by:
  samples) each read it all and keep their own positions. With a length, an epoch is one pass; without,
  an epoch is trainer.steps_per_epoch steps and the stream goes on across epochs (restarted when it ends).

A mid-epoch resume starts each lane at its position at that step (computed from the plan, and sought in the
shard when open_shard takes a start), so the skipped part is not read again.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from distrain.data.batches import Batch, LoaderOptions, PrepareTargets, _placed, _same
from distrain.data.shards import first_samples, has_length, open_at, read_range
from distrain.data.stream_plan import StreamPlan
from distrain.data.structures import cat, num_samples, split_sample, to_device, tree_map
from distrain.seeding import loader_generator, seed_worker

log = logging.getLogger("distrain")


def _split_rows(obj: Any, sizes: list[int]) -> list[Any]:
    per_leaf: list[tuple[torch.Tensor, ...]] = []
    tree_map(lambda t: per_leaf.append(t.split(sizes)), obj)
    out = []
    for index in range(len(sizes)):
        iterator = iter(leaf[index] for leaf in per_leaf)
        out.append(tree_map(lambda _t, it=iterator: next(it), obj))
    return out


READ_AHEAD = 1024  # samples a columnar lane reads at once (a step takes about global batch / lanes of them)


class _LaneReader:
    """One lane's samples of one epoch, from sample `offset` of the lane on.

    data.shuffle_window W > 0: the lane is cut into windows of W samples (at fixed places: 0, W, 2W, ...)
    and each window is read whole and put in a seeded order (seed, epoch, lane, window): a shuffle buffer
    whose state at any sample follows from its position, so a resume (on any world size) reads the window
    it stopped in again and continues the same order; nothing of the buffer is saved."""

    def __init__(self, dataset: Any, shards: list[Any], plan: StreamPlan, epoch: int, lane: int, offset: int):
        self.dataset, self.shards, self.plan, self.epoch, self.lane = dataset, shards, plan, epoch, lane
        self.offset = offset
        self.columnar = callable(getattr(dataset, "read_range", None))
        self.length = int(plan.lane_lengths(epoch)[lane])
        self.window = plan.shuffle_window
        self._samples: Iterator[Any] | None = None  # the open shards, read sample by sample
        self._buffer: list[Any] = []  # shuffle_window, sample by sample: the window's rest, in order
        self._block, self._block_index = None, -1  # columnar: one block (a window, or READ_AHEAD samples)

    def take(self, count: int) -> Any:
        """The lane's next `count` samples: collated (columnar) or a list of samples."""
        start, self.offset = self.offset, self.offset + count
        if self.columnar:
            return self._rows(start, self.offset)
        if self._samples is None:
            first = start - start % self.window if self.window else start  # the window's start
            self._samples = self._open(first)
            if self.window:
                self._buffer = self._next_window(first)[start - first :]
        if not self.window:
            return list(itertools.islice(self._samples, count))
        out = []
        while len(out) < count:
            if not self._buffer:
                self._buffer = self._next_window(start + len(out))
            take = min(count - len(out), len(self._buffer))
            out += self._buffer[:take]
            del self._buffer[:take]
        return out

    def _order(self, window: int, size: int) -> np.ndarray:
        return np.random.default_rng([self.plan.seed, self.epoch, self.lane, window]).permutation(size)

    def _next_window(self, first: int) -> list[Any]:
        samples = list(itertools.islice(self._samples, min(self.window, self.length - first)))
        return [samples[i] for i in self._order(first // self.window, len(samples))]

    def _rows(self, start: int, stop: int) -> Any:
        # A step takes a few samples of each lane: read blocks (one read_range of a memory map or a file per
        # block, not per step), at fixed places, and slice each step's rows out of them.
        size = self.window or READ_AHEAD
        pieces = []
        for index in range(start // size, (stop - 1) // size + 1):
            if index != self._block_index:
                first = index * size
                block = self._read(first, min(first + size, self.length))
                if self.window:
                    order = torch.from_numpy(self._order(index, num_samples(block)))
                    block = tree_map(lambda t, order=order: t[order], block)
                self._block, self._block_index = block, index
            a, b = max(start - index * size, 0), min(stop - index * size, size)
            pieces.append(_slice(self._block, a, b))
        return pieces[0] if len(pieces) == 1 else _cat(pieces)

    def _read(self, start: int, stop: int) -> Any:
        pieces = []
        for shard, a, b in self.plan.lane_pieces(self.epoch, self.lane, start, stop):
            piece = read_range(self.dataset, self.shards[shard], a, b)
            if num_samples(piece) != b - a:  # a shard_size that disagrees with the shard: stop, naming it
                raise _short(self.shards[shard], a, b, num_samples(piece))
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else _cat(pieces)

    def _open(self, start: int) -> Iterator[Any]:
        # Seek into the first shard (open_shard(shard, start)) on a resume; the later shards from 0. Each
        # shard gives exactly its shard_size samples, or the run stops naming it (never another shard's).
        for shard, a, b in self.plan.lane_pieces(self.epoch, self.lane, start, self.length):
            count = 0
            for sample in itertools.islice(open_at(self.dataset, self.shards[shard], a), b - a):
                count += 1
                yield sample
            if count != b - a:
                raise _short(self.shards[shard], a, b, count)


class _Readers(IterableDataset):
    """What the readers share: a user's error in a DataLoader worker (a shard that disagrees with its size)
    reaches the rank as that error, one message, not as the worker's traceback that torch re-raises."""

    def __iter__(self) -> Iterator[tuple[int, int, list[tuple[int, int]], Any]]:
        from distrain.errors import UserError

        try:
            yield from self._items()
        except UserError as exc:
            if get_worker_info() is None:
                raise
            yield -1, -1, [], _WorkerError(exc.message, exc.hint)

    def _items(self) -> Iterator[tuple[int, int, list[tuple[int, int]], Any]]:
        raise NotImplementedError


class _WorkerError:
    def __init__(self, message: str, hint: str | None):
        self.message, self.hint = message, hint


class _ShardReaders(_Readers):
    """What one reader yields for each step, from (epoch, start_step) on, epoch after epoch:
    (epoch, step, [(lane, count)], its samples of the step or None)."""

    def __init__(self, dataset: Any, shards: list[Any], plan: StreamPlan, source: _Source):
        self.dataset, self.shards, self.plan = dataset, shards, plan
        self.epoch, self.start_step, self.num_steps = source.epoch, source.start_step, source.num_steps
        self.rank, self.world_size = source.rank, source.world_size

    def _items(self) -> Iterator[tuple[int, int, list[tuple[int, int]], Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan, world = self.plan, self.world_size
        lanes = [c for c in range(self.rank, plan.lanes, world) if (c // world) % workers == worker]
        start = self.start_step
        for epoch in itertools.count(self.epoch):
            counts = {c: plan.lane_counts(epoch, c) for c in lanes}
            readers = [
                _LaneReader(self.dataset, self.shards, plan, epoch, c, int(counts[c][:start].sum())) for c in lanes
            ]
            for step in range(start, self.num_steps):
                active = [r for r in readers if counts[r.lane][step]]
                taken = [(r.lane, int(counts[r.lane][step])) for r in active]
                pieces = [reader.take(n) for reader, (_, n) in zip(active, taken)]
                if not pieces:
                    yield epoch, step, [], None
                elif isinstance(pieces[0], list):  # samples: collated once for the whole part
                    yield epoch, step, taken, default_collate(list(itertools.chain.from_iterable(pieces)))
                else:
                    yield epoch, step, taken, pieces[0] if len(pieces) == 1 else _cat(pieces)
            start = 0


class _Source:
    """What both stream sources share: the epoch, the start step, the readers' DataLoader and the batch."""

    def __init__(
        self,
        dataset: Any,
        device: torch.device,
        *,
        num_steps: int,
        rank: int,
        world_size: int,
        options: LoaderOptions,
        seed: int,
        prepare_targets: PrepareTargets = _same,
        channels_last: bool = False,
        target_key: str | None = None,
    ):
        self.dataset, self.device, self.num_steps = dataset, device, num_steps
        self.rank, self.world_size, self.options, self.seed = rank, world_size, options, seed
        self.prepare_targets, self.channels_last, self.target_key = prepare_targets, channels_last, target_key
        self.epoch = self.start_step = 0
        self._live: Iterator[Any] | None = None  # the readers' items, epoch after epoch
        self._live_key: tuple[int, int] | None = None  # the (epoch, step) it yields next
        # A rank that gets nothing in a step (short lanes at the epoch's end) trains on an empty share
        # shaped like a sample.
        self._empty = tree_map(lambda t: t[:0], default_collate(first_samples(dataset, 1)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start_step = epoch, 0

    def set_start_step(self, step: int) -> None:
        if not 0 <= step <= self.num_steps:
            raise ValueError(f"start step {step} is outside [0, {self.num_steps}]")
        self.start_step = step

    def _parts(self, readers: IterableDataset) -> Iterator[Any]:
        """The readers' items: read here (no workers), or by DataLoader workers, which it hands out
        round-robin, one per worker per step (each reader yields exactly one item per step)."""
        workers = self.options.num_workers
        if workers == 0:
            return iter(readers)
        return iter(
            DataLoader(
                readers,
                batch_size=None,
                num_workers=workers,
                prefetch_factor=self.options.prefetch_factor,
                pin_memory=self.device.type == "cuda",
                worker_init_fn=seed_worker,
                generator=loader_generator(self.seed, self.rank),
            )
        )

    def _steps(self, make_readers: Any) -> Iterator[tuple[int, list[Any]]]:
        """(step, [(lanes taken, part)] of each reader) for the steps of this epoch from start_step.

        The readers (and their worker processes) live from the run's first epoch to its end, reading the
        next epoch on while this one is evaluated; they are made again only when the loop asks for another
        place than the one they are at. Why not new workers each epoch, as a DataLoader does: forking a
        rank while one of its other threads (a finished epoch's queue feeder thread exiting, a gloo thread)
        holds Python's runtime lock leaves the worker hung before its first line on Python 3.8-3.11
        (cpython#112275); it happened here about once in twenty epochs of torchrun x2 with 2 workers."""
        if self.start_step >= self.num_steps:  # resumed at the epoch's end: nothing to read (and no fork)
            self._live_key = (self.epoch + 1, 0) if self._live is not None else None
            return
        if self._live is None or self._live_key != (self.epoch, self.start_step):
            self._live = None  # the old readers' workers stop before new ones start
            self._live = self._parts(make_readers())
        readers = max(self.options.num_workers, 1)
        for step in range(self.start_step, self.num_steps):
            got = [next(self._live) for _ in range(readers)]
            failed = next((part for _, _, _, part in got if isinstance(part, _WorkerError)), None)
            if failed is not None:
                from distrain.errors import UserError

                raise UserError(failed.message, failed.hint)
            if any((e, s) != (self.epoch, step) for e, s, _, _ in got):
                raise RuntimeError(f"stream readers out of step at {self.epoch, step}: {[g[:2] for g in got]}")
            self._live_key = (self.epoch, step + 1) if step + 1 < self.num_steps else (self.epoch + 1, 0)
            yield step, [(taken, part) for _, _, taken, part in got]

    def _batch(self, step: int, batch: Any, global_size: int, lanes: list[tuple[int, int]] | None = None) -> Batch:
        inputs, targets = split_sample(self._empty if batch is None else batch, self.target_key)
        targets = self.prepare_targets(to_device(targets, self.device))
        return Batch(step, _placed(inputs, self.device, self.channels_last), targets, global_size, lanes)


class StreamBatches(_Source):
    """This rank's training batches of a sharded stream: the interface of data.batches.TrainBatches."""

    def __init__(self, dataset: Any, shards: list[Any], plan: StreamPlan, device: torch.device, **kwargs: Any):
        super().__init__(dataset, device, num_steps=plan.num_steps, **kwargs)
        self.shards, self.plan = shards, plan
        workers = max(self.options.num_workers, 1)
        lanes = min(plan.lanes, len(shards))  # (lanes beyond the shard count stay empty)
        if lanes < self.world_size * workers:
            log.warning(
                "data: %d lanes with shards for %d ranks x %d readers: some read nothing (more shards, or "
                "fewer data.num_workers)",
                lanes,
                self.world_size,
                workers,
            )

    def __iter__(self) -> Iterator[Batch]:
        for step, got in self._steps(lambda: _ShardReaders(self.dataset, self.shards, self.plan, self)):
            if len(got) == 1:  # one reader: its part is this rank's lanes in order already
                taken, part = got[0]
                yield self._batch(step, part, self.plan.global_size(step), taken)
                continue
            pieces = []  # (lane, its rows) from every reader of this rank, put back in lane order
            for taken, part in got:
                if part is not None:
                    rows = _split_rows(part, [n for _, n in taken]) if len(taken) > 1 else [part]
                    pieces.extend(zip((lane for lane, _ in taken), rows))
            pieces.sort(key=lambda p: p[0])
            batch = None if not pieces else pieces[0][1] if len(pieces) == 1 else _cat([p for _, p in pieces])
            lanes = [(lane, num_samples(p)) for lane, p in pieces]
            yield self._batch(step, batch, self.plan.global_size(step), lanes)


# The per-step work of a columnar stream is a few slices and one concatenation per step; for the usual
# batches (a tensor, a tuple or a dict of tensors) these skip the generic tree walk (structures.py),
# which cost about as much as the copies themselves (bench: the FashionMNIST MLP, 8 lanes).
def _slice(obj: Any, a: int, b: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[a:b]
    if type(obj) in (tuple, list) and all(isinstance(t, torch.Tensor) for t in obj):
        return type(obj)(t[a:b] for t in obj)
    if type(obj) is dict and all(isinstance(t, torch.Tensor) for t in obj.values()):
        return {k: t[a:b] for k, t in obj.items()}
    return tree_map(lambda t: t[a:b], obj)


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if type(first) in (tuple, list) and all(isinstance(t, torch.Tensor) for t in first):
        return type(first)(torch.cat(column) for column in zip(*parts))
    if type(first) is dict and all(isinstance(t, torch.Tensor) for t in first.values()):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    return cat(parts)


def _short(shard: Any, start: int, stop: int, got: int) -> Exception:
    from distrain.errors import UserError

    return UserError(
        f"shard {shard!r} gave {got} samples from sample {start}, where its shard_size says {stop - start}",
        "make shard_size(shard) the number of samples open_shard(shard) yields (or drop shard_size: distrain "
        "then counts them)",
    )


class _PlainReaders(_Readers):
    """Readers of a stream without shards: each reads it all and keeps its own samples (see the module
    docstring), epoch after epoch from (epoch, start_step): (epoch, step, [(0, count)], part or None)."""

    def __init__(self, dataset: Any, pass_length: int | None, global_batch_size: int, source: _Source):
        self.dataset, self.pass_length, self.global_batch_size = dataset, pass_length, global_batch_size
        self.epoch, self.start_step, self.num_steps = source.epoch, source.start_step, source.num_steps
        self.rank, self.world_size = source.rank, source.world_size

    def _samples(self, first: int, epoch: int | None) -> Iterator[Any]:
        """The stream from position `first`: one pass (epoch given), or pass after pass (set_epoch(n) before
        pass n, if it has one) when it has no length."""
        position = 0
        for passes in itertools.count():
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch if epoch is not None else passes)
            empty = True
            for sample in self.dataset:
                empty = False
                if position >= first:
                    yield sample
                position += 1
            if empty:
                raise _plain_error(f"gave no samples on its pass {passes}", "is its __iter__ re-iterable?")
            if epoch is not None:
                return

    def _items(self) -> Iterator[tuple[int, int, list[tuple[int, int]], Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        size, world, start = self.global_batch_size, self.world_size, self.start_step
        if self.pass_length is None:  # one stream for the whole run
            stream = self._samples((self.epoch * self.num_steps + start) * size, None)
        for epoch in itertools.count(self.epoch):
            if self.pass_length is not None:  # a pass an epoch
                stream = self._samples(start * size, epoch)
            for step in range(start, self.num_steps):
                batch = list(itertools.islice(stream, size))  # read by every reader
                expected = size if self.pass_length is None else min(size, self.pass_length - step * size)
                if len(batch) != expected:
                    raise _plain_error(
                        f"gave {len(batch)} samples for step {step} of epoch {epoch}, where its length "
                        f"({self.pass_length}) says {expected}",
                        "make __len__ the number of samples one pass yields",
                    )
                share = batch[self.rank :: world]
                # Worker w keeps a contiguous block of the rank's share: the blocks in worker order are the share.
                mine = share[worker * len(share) // workers : (worker + 1) * len(share) // workers]
                yield epoch, step, [(0, len(mine))] if mine else [], default_collate(mine) if mine else None
            start = 0


def _plain_error(problem: str, hint: str) -> Exception:
    from distrain.errors import UserError

    return UserError(f"the training stream {problem}", hint)


class PlainStreamBatches(_Source):
    """This rank's training batches of a stream without shards."""

    def __init__(
        self, dataset: Any, device: torch.device, *, pass_length: int | None, global_batch_size: int, **kwargs: Any
    ):
        super().__init__(dataset, device, **kwargs)
        self.pass_length, self.global_batch_size = pass_length, global_batch_size

    def __iter__(self) -> Iterator[Batch]:
        size = self.global_batch_size
        for step, got in self._steps(lambda: _PlainReaders(self.dataset, self.pass_length, size, self)):
            parts = [part for _, part in got if part is not None]
            batch = None if not parts else parts[0] if len(parts) == 1 else cat(parts)
            global_size = size if self.pass_length is None else min(size, self.pass_length - step * size)
            yield self._batch(step, batch, global_size)


class StreamEvalBatches:
    """This rank's evaluation batches of a stream: the interface of data.batches.EvalBatches. Sharded: each
    shard cut into batches of eval_batch_size (numbered in shard order: the same batches on any world
    size), rank r reading shards r, r+W, ...; a plain stream with a length: read by every rank, each keeping
    its contiguous run of batches (as for a map-style set)."""

    def __init__(
        self,
        dataset: Any,
        eval_batch_size: int,
        rank: int,
        world_size: int,
        device: torch.device,
        *,
        sizes: list[int] | None,
        prepare_targets: PrepareTargets = _same,
        channels_last: bool = False,
        target_key: str | None = None,
        **_: Any,
    ):
        self.dataset, self.size, self.rank, self.world_size, self.device = (
            dataset,
            eval_batch_size,
            rank,
            world_size,
            device,
        )
        self.prepare_targets, self.channels_last, self.target_key = prepare_targets, channels_last, target_key
        self.sizes = sizes
        if sizes is not None:
            per_shard = [-(-n // eval_batch_size) for n in sizes]
            self.first = [sum(per_shard[:i]) for i in range(len(sizes))]
            self.num_batches = sum(per_shard)
            self.most_per_rank = max(sum(per_shard[r::world_size]) for r in range(world_size))
        else:
            from distrain.data.sampling import eval_batch_ranges

            self.ranges = eval_batch_ranges(len(dataset), eval_batch_size, rank, world_size)
            self.num_batches = -(-len(dataset) // eval_batch_size)
            self.most_per_rank = -(-self.num_batches // world_size)

    def _cut(self) -> Iterator[tuple[int, list[Any]]]:
        if self.sizes is not None:
            shards = list(self.dataset.shards())
            for i in range(self.rank, len(shards), self.world_size):
                samples = iter(open_at(self.dataset, shards[i], 0))
                for b in range(-(-self.sizes[i] // self.size)):
                    yield self.first[i] + b, list(itertools.islice(samples, self.size))
            return
        stream = iter(self.dataset)
        position = 0
        for index, part in self.ranges:
            start, end = part.start, part.stop
            if start > position:
                next(itertools.islice(stream, start - position - 1, None), None)  # skip to `start`
            samples = list(itertools.islice(stream, end - start))
            if len(samples) != end - start:
                from distrain.errors import UserError

                raise UserError(
                    f"an evaluation stream ended before sample {end} of the {len(self.dataset)} its length says",
                    "make __len__ the number of samples it yields",
                )
            yield index, samples
            position = end

    def __iter__(self) -> Iterator[Batch]:
        for index, samples in self._cut():
            inputs, targets = split_sample(default_collate(samples), self.target_key)
            yield Batch(
                index,
                _placed(inputs, self.device, self.channels_last),
                self.prepare_targets(to_device(targets, self.device)),
                len(samples),
            )

    def filler_inputs(self) -> Any:
        inputs, _ = split_sample(default_collate(first_samples(self.dataset, 1)), self.target_key)
        return _placed(inputs, self.device, self.channels_last)


class StreamSetup:
    """How the training split is streamed, decided once before anything is written (so a stream that
    cannot be split ends the run with its message and no run directory)."""

    def __init__(
        self,
        shards: list[Any] | None,
        sizes: list[int] | None,
        lanes: int,
        pass_length: int | None,
        steps_per_epoch: int | None,
        shuffle_window: int = 0,
    ):
        self.shards, self.sizes, self.lanes, self.shuffle_window = shards, sizes, lanes, shuffle_window
        self.pass_length, self.steps_per_epoch = pass_length, steps_per_epoch


def describe_stream(
    dataset: Any,
    *,
    lanes: int | None,
    split_by: str,
    world_size: int,
    num_workers: int,
    steps_per_epoch: int | None,
    shuffle_window: int = 0,
    max_steps: int | None = None,
    global_batch_size: int = 1,
) -> StreamSetup | None:
    """The training split's StreamSetup, or None for a map-style set (read by index). Raises the user's
    error for a stream that cannot be dealt over the readers."""
    from distrain.data.shards import is_sharded, is_stream, shard_sizes
    from distrain.data.stream_plan import default_lanes
    from distrain.errors import ConfigError

    if not is_stream(dataset):
        return None
    readers = world_size * max(num_workers, 1)
    if is_sharded(dataset) and split_by == "shards":
        shards = list(dataset.shards())
        if not shards:
            raise ConfigError("data", "the training set has no shards (its shards() returned nothing)")
        sizes = shard_sizes(dataset)
        if sum(sizes) == 0:
            raise ConfigError("data", "the training set's shards hold no samples")
        count = lanes or default_lanes(len(shards))
        log.info(
            "data: %d samples in %d shards, dealt to %d lanes (data.lanes) over %d ranks x %d readers",
            sum(sizes),
            len(shards),
            count,
            world_size,
            max(num_workers, 1),
        )
        return StreamSetup(shards, sizes, count, None, steps_per_epoch, shuffle_window)
    pass_length = len(dataset) if has_length(dataset) else None
    if readers > 1 and split_by != "samples":
        raise ConfigError(
            "data.split_by",
            f"the training set is an IterableDataset without shards, and {world_size} processes x "
            f"{max(num_workers, 1)} DataLoader workers would each read all of it",
            "give it shards: subclass distrain.ShardedDataset with shards() and open_shard(shard, start) "
            "(each reader then reads only its own); or set data.split_by=samples (every reader reads the "
            "whole stream and keeps one sample in N); or train in one process with data.num_workers=0",
        )
    if shuffle_window:
        log.info("data: data.shuffle_window does nothing for a stream without shards: it is read in its order")
    passes_steps = -(-pass_length // global_batch_size) if pass_length is not None else None
    if passes_steps is not None and steps_per_epoch is not None and steps_per_epoch < passes_steps:
        log.warning(
            "data: trainer.steps_per_epoch ends each pass of the stream early, and each epoch starts a new pass: "
            "the same first samples every epoch unless its set_epoch(epoch) reorders them"
        )
    if readers > 1:
        log.info(
            "data: the stream has no shards: each of the %d readers reads all of it and keeps one sample in %d "
            "(data.split_by=samples)",
            readers,
            readers,
        )
    if pass_length is None and steps_per_epoch is None and max_steps is not None:
        steps_per_epoch = max_steps  # the run is one epoch of trainer.max_steps steps
    if pass_length is None and steps_per_epoch is None:
        raise ConfigError(
            "trainer.steps_per_epoch",
            "is not set and the training set is a stream without a length, so an epoch has no end",
            "set trainer.steps_per_epoch (optimizer steps per epoch; the stream goes on across epochs) or "
            "trainer.max_steps (the run's steps), or give the data set a __len__",
        )
    return StreamSetup(None, None, 1, pass_length, steps_per_epoch)


def build_stream_batches(
    dataset: Any,
    setup: StreamSetup,
    *,
    global_batch_size: int,
    shuffle: bool,
    seed: int,
    device: torch.device,
    **kwargs: Any,
) -> _Source:
    if setup.shards is not None:
        plan = StreamPlan(
            setup.sizes,
            lanes=setup.lanes,
            global_batch_size=global_batch_size,
            seed=seed,
            shuffle=shuffle,
            shuffle_window=setup.shuffle_window if shuffle else 0,
        )
        source: _Source = StreamBatches(dataset, setup.shards, plan, device, seed=seed, **kwargs)
    else:
        natural = -(-setup.pass_length // global_batch_size) if setup.pass_length is not None else None
        source = PlainStreamBatches(
            dataset,
            device,
            pass_length=setup.pass_length,
            global_batch_size=global_batch_size,
            num_steps=natural or setup.steps_per_epoch,
            seed=seed,
            **kwargs,
        )
    if setup.steps_per_epoch is not None:
        source.num_steps = min(source.num_steps, setup.steps_per_epoch)
    return source
