"""A sharded stream for the tests: `num_shards` shards of `per_shard` samples (the last `last` long when
given), each a dict {"x": 4 features, "id": its global id, "y": class 0..2}, values derived from the id.
IdShards has read_range (whole slices: the fast path); Sequential reads sample by sample (seeking);
Unseekable's open_shard takes no start. Also an `IdModel` that writes each training forward's ids (the `id`
input) with the global step, and the callback that tells it the step."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

import distrain


def sample(i: int) -> dict:
    g = torch.Generator().manual_seed(i)
    return {"x": torch.randn(4, generator=g), "id": torch.tensor(i), "y": torch.tensor(i % 3)}


class IdShards(distrain.ShardedDataset):
    def __init__(self, num_shards: int = 12, per_shard: int = 20, last: int | None = None):
        self.sizes = [per_shard] * num_shards
        if last is not None:
            self.sizes[-1] = last
        self.starts = [sum(self.sizes[:i]) for i in range(num_shards)]
        self.opened: list = []  # (shard, start) of each open_shard call, in this process

    def shards(self):
        return list(range(len(self.sizes)))

    def shard_size(self, shard):
        return self.sizes[shard]

    def open_shard(self, shard, start=0):
        self.opened.append((shard, start))
        for i in range(self.starts[shard] + start, self.starts[shard] + self.sizes[shard]):
            yield sample(i)

    def read_range(self, shard, start, stop):
        first = self.starts[shard]
        samples = [sample(i) for i in range(first + start, first + stop)]
        return {k: torch.stack([s[k] for s in samples]) for k in ("x", "id", "y")}


class Sequential(IdShards):
    read_range = None  # type: ignore[assignment]


class Unseekable(Sequential):
    def open_shard(self, shard):  # type: ignore[override]
        yield from IdShards.open_shard(self, shard, 0)


class Plain(torch.utils.data.IterableDataset):
    """A generator of samples, no shards, no length."""

    def __init__(self, count: int = 240):
        self.count = count

    def __iter__(self):
        return (sample(i) for i in range(self.count))


def id_data(num_shards: int = 12, per_shard: int = 20, last: int | None = None, kind: str = "columnar"):
    """The data set function of the configs: (train, test), train a stream of `kind`."""
    kinds = {"columnar": IdShards, "sequential": Sequential, "unseekable": Unseekable}
    if kind == "plain":
        return Counted(sum([per_shard] * (num_shards - 1)) + (per_shard if last is None else last)), IdShards(3, 10)
    return kinds[kind](num_shards, per_shard, last), IdShards(3, 10)


class Counted(Plain):
    """A generator of samples with a length: an epoch is one pass."""

    def __len__(self):
        return self.count


STEP = {"global": 0}


class IdModel(nn.Module):
    """Writes each training forward's ids to $IDS_DIR/ids-<RANK>.jsonl as {"step": global step, "ids"}."""

    def __init__(self, out: str | None = None):
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.out = out or os.environ.get("IDS_DIR")

    def forward(self, x, id):
        if self.training and self.out:
            rank = int(os.environ.get("RANK", "0"))
            with open(os.path.join(self.out, f"ids-{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": STEP["global"], "ids": id.tolist()}) + "\n")
        return self.layer(x)


class StepCounter:
    def on_train_start(self, run):
        STEP["global"] = run.global_step

    def on_step_end(self, run):
        STEP["global"] = run.global_step


def hf_data(kind: str = "map", num_rows: int = 230, num_shards: int = 4):
    """The same samples as a Hugging Face Dataset (kind map) or IterableDataset of `num_shards` shards."""
    import datasets

    rows = [sample(i) for i in range(num_rows)]
    table = datasets.Dataset.from_dict(
        {"x": [r["x"].tolist() for r in rows], "id": list(range(num_rows)), "y": [i % 3 for i in range(num_rows)]}
    ).with_format("torch")
    train = table if kind == "map" else table.to_iterable_dataset(num_shards=num_shards).with_format("torch")
    return train, IdShards(3, 10)
