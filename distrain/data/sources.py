"""Which batch source reads a split: by index (data/batches.py) or as a stream (data/streams.py).

    train = build_train_batches(data.train, setup, stream=parts.stream, ...)   # TrainBatches or a stream's
    test = build_eval_batches(data.test, setup, eval_batch_size=...)            # EvalBatches or a stream's

A training split is a stream when build_parts found one (data/streams.py describe_stream: decided before
anything is written); an evaluation split when it cannot be indexed (a map-style set that is also sharded,
such as distrain's file shards, is evaluated by index).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch.utils.data import Dataset

from distrain.data import batches
from distrain.data.batches import BatchSetup
from distrain.data.shards import has_length, is_indexable, is_sharded, is_stream, shard_sizes
from distrain.data.streams import StreamEvalBatches, StreamSetup, build_stream_batches
from distrain.errors import ConfigError


def build_train_batches(
    dataset: Dataset,
    setup: BatchSetup,
    *,
    global_batch_size: int,
    shuffle: bool,
    stream: StreamSetup | None = None,
    steps_per_epoch: int | None = None,
) -> Any:
    if stream is None:
        return batches.build_train_batches(
            dataset, setup, global_batch_size=global_batch_size, shuffle=shuffle, steps_per_epoch=steps_per_epoch
        )
    # A stream has no tensor path, and its readers' workers live for the whole run already (streams.py).
    options = dataclasses.replace(setup.options, persistent_workers=False)
    # (trainer.steps_per_epoch is in the StreamSetup)
    return build_stream_batches(
        dataset,
        stream,
        global_batch_size=global_batch_size,
        shuffle=shuffle,
        device=setup.device,
        rank=setup.rank,
        world_size=setup.world_size,
        options=options,
        **setup.placed(),
    )


def build_eval_batches(dataset: Dataset, setup: BatchSetup, *, eval_batch_size: int) -> Any:
    if not is_stream(dataset) or is_indexable(dataset):
        return batches.build_eval_batches(dataset, setup, eval_batch_size=eval_batch_size)
    if not is_sharded(dataset) and not has_length(dataset):
        raise ConfigError(
            "data",
            "an evaluation split is a stream without shards and without a length: its batches cannot be dealt "
            "over the ranks",
            "give it shards (distrain.ShardedDataset) or a __len__, or evaluate a map-style Dataset",
        )
    return StreamEvalBatches(
        dataset,
        eval_batch_size,
        setup.rank,
        setup.world_size,
        setup.device,
        sizes=shard_sizes(dataset) if is_sharded(dataset) else None,
        **setup.placed(),
    )
