"""Which batch source reads a split: by index (data/batches.py) or as a stream (data/streams.py).

    train = build_train_batches(data.train, stream=parts.stream, ...)   # TrainBatches or a stream's
    test = build_eval_batches(data.test, ...)                            # EvalBatches or a stream's

A training split is a stream when build_parts found one (data/streams.py describe_stream: decided before
anything is written); an evaluation split when it cannot be indexed (a map-style set that is also sharded,
such as distrain's file shards, is evaluated by index).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from distrain.data import batches
from distrain.data.batches import LoaderOptions
from distrain.data.shards import has_length, is_indexable, is_sharded, is_stream, shard_sizes
from distrain.data.streams import StreamEvalBatches, StreamSetup, build_stream_batches
from distrain.errors import ConfigError


def build_train_batches(
    dataset: Dataset, *, stream: StreamSetup | None = None, steps_per_epoch: int | None = None, **kwargs: Any
) -> Any:
    if stream is None:
        return batches.build_train_batches(dataset, steps_per_epoch=steps_per_epoch, **kwargs)
    # A stream has no tensor path, and its readers' workers live for the whole run already (streams.py).
    kwargs.pop("loader"), kwargs.pop("persistent_workers", None)
    options = LoaderOptions(kwargs.pop("num_workers"), False, kwargs.pop("prefetch_factor", None))
    # (trainer.steps_per_epoch is in the StreamSetup)
    return build_stream_batches(dataset, stream, options=options, **kwargs)


def build_eval_batches(dataset: Dataset, **kwargs: Any) -> Any:
    if not is_stream(dataset) or is_indexable(dataset):
        return batches.build_eval_batches(dataset, **kwargs)
    if not is_sharded(dataset) and not has_length(dataset):
        raise ConfigError(
            "data",
            "an evaluation split is a stream without shards and without a length: its batches cannot be dealt "
            "over the ranks",
            "give it shards (distrain.ShardedDataset) or a __len__, or evaluate a map-style Dataset",
        )
    return StreamEvalBatches(
        dataset,
        kwargs.pop("eval_batch_size"),
        kwargs.pop("rank"),
        kwargs.pop("world_size"),
        kwargs.pop("device"),
        sizes=shard_sizes(dataset) if is_sharded(dataset) else None,
        **kwargs,
    )
