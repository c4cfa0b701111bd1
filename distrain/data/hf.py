"""Hugging Face `datasets` as distrain data: a map-style Arrow `Dataset` as it is, an `IterableDataset`
(a stream) through the shards protocol (data/shards.py), and the `huggingface` data set by name.

    ds = Dataset.from_dict(...).with_format("torch")            # map-style: indexed like any Dataset
    stream = ds.to_iterable_dataset(num_shards=4)               # or load_dataset(..., streaming=True)
    distrain.fit(cfg, model=net, train_data=stream)             # dealt by shard over ranks and workers
    data: {name: huggingface, args: {path: parquet, data_files: {train: train/*.parquet, test: test.parquet}}}

A stream's shards are its own (`n_shards`: the files of load_dataset(..., streaming=True), the pieces of
to_iterable_dataset(num_shards=N)): shard i is `ds.shard(n_shards, i)`, exactly the i-th source (tested:
every row once over the shards), and `open_shard(i, start)` skips `start` rows of it. Samples are dicts of
tensors (`with_format("torch")`); the target is found by key as for any dict sample (data.target_key, or
one of label, labels, target, ...).

`datasets` is imported only where it is used: never when distrain is imported, and `as_sharded` tells an
HF stream by its type's module without importing it.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

from torch.utils.data._utils.collate import default_collate

from distrain.data.datasets import DataSets
from distrain.data.shards import ShardedDataset
from distrain.data.structures import tree_map
from distrain.errors import ConfigError, UserError

CHUNK = 1024  # rows per batch when a shard is read (one Arrow-to-tensor conversion per chunk)


def is_hf_stream(obj: Any) -> bool:
    """Whether `obj` is a `datasets.IterableDataset` (without importing `datasets`: an object of one of its
    types means it is imported already)."""
    if not type(obj).__module__.startswith("datasets."):
        return False
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, datasets.IterableDataset)


def is_hf_dataset(obj: Any) -> bool:
    """Whether `obj` is a map-style `datasets.Dataset` (an Arrow table, indexed)."""
    if not type(obj).__module__.startswith("datasets."):
        return False
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, datasets.Dataset)


def as_sharded(obj: Any) -> Any:
    """The shards adapter (HFShards) for a Hugging Face IterableDataset; anything else unchanged."""
    return HFShards(obj) if is_hf_stream(obj) else obj


class HFShards(ShardedDataset):
    """A `datasets.IterableDataset` read by its own shards: `shards()` is range(n_shards), `open_shard(i,
    start)` reads shard i alone from row `start`, `read_range` collates rows [start, stop) of a shard in one
    Arrow conversion. Picklable (a DataLoader worker gets a copy)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset.with_format("torch")
        self.num_shards = int(dataset.n_shards)

    def __repr__(self) -> str:
        return f"HFShards({self.num_shards} shards, columns {self.dataset.column_names})"

    def shards(self) -> list[int]:
        return list(range(self.num_shards))

    def _shard(self, shard: int) -> Any:
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} of a stream of {self.num_shards} shards")
        # contiguous: shard i of n_shards is exactly the i-th source (a file, a piece), not every n-th row.
        return self.dataset.shard(num_shards=self.num_shards, index=shard, contiguous=True)

    def open_shard(self, shard: int, start: int = 0) -> Iterator[dict[str, Any]]:
        part = self._shard(shard)
        if start:
            part = part.skip(start)
        # .iter(batch_size) rather than iter(part): inside a DataLoader worker, an HF IterableDataset's own
        # __iter__ splits itself again over the workers (its torch integration), and a worker whose index
        # exceeds this one shard's single source would read nothing. distrain has already dealt the shards.
        for batch in part.iter(batch_size=CHUNK):
            yield from _rows(batch)

    def read_range(self, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Rows [start, stop) of `shard` as one batch (dict of stacked tensors)."""
        if stop <= start:
            first = next(self.open_shard(shard), None)
            if first is None:
                raise IndexError(f"shard {shard} is empty")
            return tree_map(lambda t: t[:0], default_collate([first]))
        part = self._shard(shard).skip(start).take(stop - start)
        return next(iter(part.iter(batch_size=stop - start)))

    def shard_size(self, shard: int) -> int:
        """Rows in `shard`, counted through Arrow tables (no conversion to Python or tensors)."""
        part = self._shard(shard).with_format("arrow")
        return sum(table.num_rows for table in part.iter(batch_size=65536))


def _rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    for row in range(size):
        yield {name: batch[name][row] for name in columns}


def num_classes_of(dataset: Any, target_key: str = "label") -> int | None:
    """The class count of an HF data set's `target_key` column when its feature is a ClassLabel."""
    features = getattr(dataset, "features", None) or {}
    feature = features.get(target_key) if hasattr(features, "get") else None
    return int(feature.num_classes) if getattr(feature, "num_classes", None) is not None else None


def huggingface(
    *,
    path: str,
    name: str | None = None,
    data_files: Any = None,
    data_dir: str | None = None,
    streaming: bool = False,
    train_split: str = "train",
    test_split: str | None = "test",
    columns: list[str] | None = None,
    target_key: str = "label",
    num_classes: int | None = None,
) -> DataSets:
    """A data set through `datasets.load_dataset(path, name, data_files=, data_dir=, streaming=)`: local
    files (`path: parquet`, `json`, `csv` with `data_files`) or a Hub name (fetched into the HF cache).
    `train_split` and `test_split` (null: none) name its splits; `columns` keeps only those; samples are
    dicts of tensors; `streaming`: read as a stream of shards (HFShards). `num_classes` defaults to the
    `target_key` column's ClassLabel count when it has one."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "data.name", "huggingface needs the `datasets` package", "pip install 'distrain[datasets]'"
        ) from None
    try:
        loaded = datasets.load_dataset(path, name, data_files=data_files, data_dir=data_dir, streaming=streaming)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise UserError(
            f"data.args.path={path}: datasets.load_dataset failed: {' '.join(str(exc).split())[:300]}",
            "check data.args.path, data.args.data_files and data.args.name",
        ) from None
    available = list(loaded)
    for key, split in (("train_split", train_split), ("test_split", test_split)):
        if split is not None and split not in available:
            raise ConfigError(f"data.args.{key}", f"{split!r} is not a split of {path} (splits: {available})")

    def prepared(split: str | None) -> Any:
        if split is None:
            return None
        part = loaded[split]
        if columns is not None:
            part = part.select_columns(columns)
        return HFShards(part) if streaming else part.with_format("torch")

    train = prepared(train_split)
    classes = num_classes if num_classes is not None else num_classes_of(loaded[train_split], target_key)
    return DataSets(train, prepared(test_split), num_classes=classes)
