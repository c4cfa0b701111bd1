"""The protocol of a data set read in shards: what a stream must expose so that distrain can deal it over
ranks and DataLoader workers, each reading only its own shards, and resume it mid-epoch without reading
the skipped part again.

    class MyShards(distrain.ShardedDataset):
        def __init__(self, files): self.files = sorted(files)
        def shards(self): return self.files                        # picklable, the same on every rank
        def shard_size(self, shard): return count_samples(shard)   # optional: else counted at start
        def open_shard(self, shard, start=0):                      # the samples of one shard, from `start`
            yield from read_samples(shard, skip=start)

Optional, for speed: `read_range(shard, start, stop)` returns the samples [start, stop) of a shard already
collated (a tensor, a tuple or a dict of tensors, as default_collate would make them): a columnar format
(arrays, memory maps) then costs no Python per sample.

Any object with `shards` and `open_shard` is taken as sharded (duck typing); subclassing ShardedDataset
adds `__iter__` (every shard in order), so the same object also works as a plain IterableDataset.
A plain IterableDataset (no shards) is read whole by one reader; with more readers (ranks x workers) it is
refused, unless `data.split_by: samples` opts in to every reader reading it all and keeping one in N.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from typing import Any, Iterator, Sequence

from torch.utils.data import Dataset, IterableDataset
from torch.utils.data._utils.collate import default_collate

log = logging.getLogger("distrain")


class ShardedDataset(IterableDataset):
    """Base class of a data set read in shards (see the module docstring). Subclasses define `shards` and
    `open_shard`, and `shard_size` when a shard's length is known without reading it."""

    def shards(self) -> Sequence[Any]:
        raise NotImplementedError

    def open_shard(self, shard: Any, start: int = 0) -> Iterator[Any]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        for shard in self.shards():
            yield from self.open_shard(shard)


def is_sharded(dataset: Any) -> bool:
    return callable(getattr(dataset, "shards", None)) and callable(getattr(dataset, "open_shard", None))


def is_stream(dataset: Any) -> bool:
    """Read as a stream (not by index): an IterableDataset, or anything sharded."""
    return isinstance(dataset, IterableDataset) or is_sharded(dataset)


def is_indexable(dataset: Any) -> bool:
    """Read by index (a map-style set: len and [i]). Not an IterableDataset: it inherits a __getitem__
    that only raises. A sharded set that is also indexable (distrain's file shards) is evaluated so."""
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__") and has_length(dataset)


def has_length(dataset: Any) -> bool:
    try:
        len(dataset)
    except TypeError:
        return False
    return True


def shard_sizes(dataset: Any) -> list[int]:
    """Samples per shard, in `shards()` order: from `shard_size`, else counted by reading each shard (on
    every rank, at every start and resume; logged with its cost: define shard_size to skip it)."""
    shards = list(dataset.shards())
    sizer = getattr(dataset, "shard_size", None)
    if callable(sizer):
        return [int(sizer(shard)) for shard in shards]
    started = time.perf_counter()
    sizes = [sum(1 for _ in dataset.open_shard(shard)) for shard in shards]
    log.info(
        "data: counted %d samples in %d shards by reading them (%.1f s); a shard_size(shard) method skips this",
        sum(sizes),
        len(shards),
        time.perf_counter() - started,
    )
    return sizes


def open_at(dataset: Any, shard: Any, start: int) -> Iterator[Any]:
    """The samples of `shard` from `start`: open_shard(shard, start) when it takes a start, else read and
    skip."""
    if takes_start(dataset):
        return iter(dataset.open_shard(shard, start))
    return itertools.islice(iter(dataset.open_shard(shard)), start, None)


def takes_start(dataset: Any) -> bool:
    """Whether open_shard can seek (takes a second argument, the first sample to read)."""
    try:
        parameters = inspect.signature(dataset.open_shard).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def read_range(dataset: Any, shard: Any, start: int, stop: int) -> Any:
    """Samples [start, stop) of `shard`, collated: the data set's own read_range, else read one by one."""
    reader = getattr(dataset, "read_range", None)
    if callable(reader):
        return reader(shard, start, stop)
    return default_collate(list(itertools.islice(open_at(dataset, shard, start), stop - start)))


def first_samples(dataset: Dataset, count: int) -> list[Any]:
    """The first `count` samples of a stream (of its first shard, when sharded)."""
    if is_sharded(dataset):
        samples: list[Any] = []
        for shard in dataset.shards():
            samples.extend(itertools.islice(open_at(dataset, shard, 0), count - len(samples)))
            if len(samples) >= count:
                break
        return samples
    return list(itertools.islice(iter(dataset), count))
