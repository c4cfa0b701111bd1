"""distrain's own file shards: a folder of numpy arrays read through memory maps, for data that does not
fit in memory.

    distrain shards configs/fashion_mnist.yaml data/fashion_mnist_shards     # OUT/train, OUT/test
    data: {name: shards, args: {root: data/fashion_mnist_shards}}            # then train from them

A shard folder holds `index.json` and one `.npy` per field per shard:

    index.json                  {"format": "distrain.shards", "version": 1, "structure": "tuple",
                                 "fields": [{"name": "0", "dtype": "uint8", "shape": [1, 28, 28],
                                             "transform": {"name": "image", "mean": [0.286], "std": [0.353]}},
                                            {"name": "1", "dtype": "int64", "shape": []}],
                                 "shards": [{"name": "shard-00000", "num_samples": 8192}, ...],
                                 "num_samples": 60000, "num_classes": 10}
    shard-00000.0.npy           [8192, 1, 28, 28] uint8   (field 0 of shard 0)
    shard-00000.1.npy           [8192] int64

`structure` is how a sample is put together from its fields: "tuple" (x, y), "dict" (field names as keys)
or "tensor" (one field). A field's `transform` is the batch transform the source applied on read (the
in-memory image sets keep uint8 images and scale and normalise per batch: data/in_memory.py); it is
recorded rather than applied when writing, so the shards stay uint8 (4x smaller than float32) and the
values read back equal the in-memory path's bit for bit (the same elementwise ops).

`FileShards(root)` is a sharded data set (data/shards.py: `shards`, `open_shard`, `shard_size`, and
`read_range` slicing the maps: no Python per sample) and also a map-style one (`__len__`, `__getitem__`),
so a small test split is evaluated through the ordinary DataLoader path. `write_shards` writes any
map-style Dataset, atomically: a temporary folder next to the target, renamed into place when whole.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from distrain.atomic import atomic_write_dir
from distrain.data.datasets import DataSets
from distrain.errors import ConfigError, UserError

FORMAT = "distrain.shards"
VERSION = 1
INDEX = "index.json"
CHUNK = 1024  # samples per read_range when open_shard iterates a shard sample by sample


# ------------------------------------------------------------------------------------------------ reading


class FileShards(Dataset):
    """The shards of one split folder (its index.json and .npy files). `transform`: apply each field's
    recorded batch transform on read (the source's values); false gives the stored values (uint8
    images) and leaves `transforms` (field index -> callable on a batch) to the caller, e.g. to apply on
    the training device after a 4x smaller copy."""

    def __init__(self, root: str | os.PathLike, *, transform: bool = True):
        self.root = Path(root)
        self.index = read_index(self.root)
        self.fields: list[dict[str, Any]] = self.index["fields"]
        self.structure: str = self.index["structure"]
        self.num_classes: int | None = self.index.get("num_classes")
        self.transforms = {i: _transform_of(f, self.root) for i, f in enumerate(self.fields) if f.get("transform")}
        self.apply_transform = transform
        self._sizes = {s["name"]: int(s["num_samples"]) for s in self.index["shards"]}
        self._names = [s["name"] for s in self.index["shards"]]
        self._offsets = np.cumsum([0] + [self._sizes[n] for n in self._names]).tolist()  # global start of each
        self._maps: dict[tuple[str, int], np.ndarray] = {}

    # The maps are opened lazily in each process: a DataLoader worker gets a copy without them (an open
    # memory map pickles as its whole contents) and opens its own.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    # --- the shards protocol (data/shards.py)

    def shards(self) -> list[str]:
        return list(self._names)

    def shard_size(self, shard: str) -> int:
        return self._sizes[shard]

    def read_range(self, shard: str, start: int, stop: int) -> Any:
        """Samples [start, stop) of `shard`, collated: slices of the memory maps, copied out."""
        columns = [torch.from_numpy(np.array(self._map(shard, i)[start:stop])) for i in range(len(self.fields))]
        return self._assemble(self._transformed(columns))

    def open_shard(self, shard: str, start: int = 0) -> Iterator[Any]:
        # Read in chunks through read_range (one copy and one transform per chunk), then hand out samples.
        size = self._sizes[shard]
        for chunk_start in range(start, size, CHUNK):
            batch = self.read_range(shard, chunk_start, min(chunk_start + CHUNK, size))
            yield from self._samples(batch)

    def __iter__(self) -> Iterator[Any]:
        for shard in self._names:
            yield from self.open_shard(shard)

    # --- map-style access (a test split through the DataLoader path)

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """Several samples at once (the DataLoader calls this with a batch's indices): one gather and one
        transform per shard touched, not one per sample."""
        located = [self._locate(int(i)) for i in indices]
        out: list[Any] = [None] * len(located)
        for shard in dict.fromkeys(shard for shard, _ in located):
            positions = [p for p, (s, _) in enumerate(located) if s == shard]
            rows = np.array([located[p][1] for p in positions])
            columns = [torch.from_numpy(np.array(self._map(shard, i)[rows])) for i in range(len(self.fields))]
            for position, sample in zip(positions, self._samples(self._assemble(self._transformed(columns)))):
                out[position] = sample
        return out

    # --- helpers

    def _locate(self, index: int) -> tuple[str, int]:
        total = len(self)
        if not -total <= index < total:
            raise IndexError(f"index {index} is out of range for {total} samples ({self.root})")
        index %= total
        shard = bisect.bisect_right(self._offsets, index) - 1
        return self._names[shard], index - self._offsets[shard]

    def _map(self, shard: str, field: int) -> np.ndarray:
        key = (shard, field)
        if key not in self._maps:
            path = self.root / _file_name(shard, field)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise UserError(
                    f"cannot read shard file {path}: {exc}", "write the shards again (distrain shards CONFIG OUT)"
                ) from None
            spec = self.fields[field]
            expected = (self._sizes[shard], *spec["shape"])
            if array.shape != expected or str(array.dtype) != spec["dtype"]:
                raise UserError(
                    f"shard file {path} holds {list(array.shape)} {array.dtype}, but {self.root / INDEX} says "
                    f"{list(expected)} {spec['dtype']}",
                    "the folder was changed after it was written: write the shards again",
                )
            self._maps[key] = array
        return self._maps[key]

    def _transformed(self, columns: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.apply_transform:
            return columns
        return [self.transforms[i](c) if i in self.transforms else c for i, c in enumerate(columns)]

    def _assemble(self, columns: list[torch.Tensor]) -> Any:
        if self.structure == "dict":
            return {f["name"]: c for f, c in zip(self.fields, columns)}
        if self.structure == "tensor":
            return columns[0]
        return tuple(columns)

    def _samples(self, batch: Any) -> Iterator[Any]:
        if isinstance(batch, dict):
            rows = zip(*(t.unbind(0) for t in batch.values()))
            yield from (dict(zip(batch, row)) for row in rows)
        elif isinstance(batch, tuple):
            yield from zip(*(t.unbind(0) for t in batch))
        else:
            yield from batch.unbind(0)


def read_index(root: Path) -> dict[str, Any]:
    """A split folder's index.json, checked: its format, version and the files it names."""
    path = root / INDEX
    if not path.is_file():
        raise UserError(
            f"{root} is not a shard folder (no {INDEX})",
            "write one first: distrain shards CONFIG OUT (then data.args.root: OUT)",
        )
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}", "write the shards again (distrain shards CONFIG OUT)") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{path} is not a distrain shard index (format {index.get('format')!r}, not {FORMAT!r})")
    if index.get("version") != VERSION:
        raise UserError(
            f"{path} is shard format version {index.get('version')}; this distrain reads version {VERSION}",
            "write the shards again with this distrain (distrain shards CONFIG OUT)",
        )
    missing = [
        _file_name(s["name"], i)
        for s in index["shards"]
        for i in range(len(index["fields"]))
        if not (root / _file_name(s["name"], i)).is_file()
    ]
    if missing:
        raise UserError(f"{len(missing)} shard file(s) named in {path} are missing, e.g. {root / missing[0]}")
    return index


def _file_name(shard: str, field: int) -> str:
    return f"{shard}.{field}.npy"


def _transform_of(field: dict[str, Any], root: Path):
    """The callable a field's recorded transform stands for (one kind today: the in-memory image sets')."""
    spec = field["transform"]
    if spec.get("name") != "image":
        raise UserError(
            f"{root / INDEX}: field {field['name']!r} has an unknown transform {spec.get('name')!r}",
            "write the shards again with this distrain",
        )
    from distrain.data.in_memory import BatchTransform

    mean, std = spec.get("mean"), spec.get("std")
    return BatchTransform(
        crop=spec.get("crop"),
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
    )


def shards(*, root: str, num_classes: int | None = None) -> DataSets:
    """Shards written by `distrain shards` (or write_shards): `root`/train, and `root`/test and `root`/val
    when present. `num_classes` when the index does not record it."""
    folder = Path(root)
    if not (folder / "train").is_dir():
        raise ConfigError(
            "data.args.root",
            f"{folder} has no train/ shard folder",
            "write the shards first: distrain shards CONFIG OUT, then set data.args.root to OUT",
        )
    splits = {n: FileShards(folder / n) for n in ("train", "test", "val") if (folder / n / INDEX).is_file()}
    if "train" not in splits:
        FileShards(folder / "train")  # raises the index's own error
    classes = num_classes if num_classes is not None else splits["train"].num_classes
    return DataSets(splits["train"], splits.get("test"), splits.get("val"), num_classes=classes)


# ------------------------------------------------------------------------------------------------ writing


def write_shards(
    dataset: Dataset, out_dir: str | os.PathLike, samples_per_shard: int = 8192, *, num_classes: int | None = None
) -> Path:
    """Write a map-style `dataset` as shards into `out_dir` (which must not exist or be empty), atomically:
    into a temporary folder next to it, renamed into place once whole. A TensorDataset is sliced whole
    tensors at a time; any other Dataset is read sample by sample and collated shard by shard. Samples are
    tuples, dicts of tensors (or numbers) or one tensor. Returns `out_dir`."""
    return atomic_write_dir(Path(out_dir), lambda tmp: _write_into(dataset, tmp, samples_per_shard, num_classes))


def write_splits(data: DataSets, out_dir: str | os.PathLike, samples_per_shard: int = 8192) -> Path:
    """Each split of `data` (train, and test and val when present) as `out_dir`/<split>, all at once
    atomically (as write_shards). What `distrain shards` writes and the `shards` data set reads."""

    def fill(tmp: Path) -> None:
        for split in ("train", "test", "val"):
            dataset = getattr(data, split)
            if dataset is not None:
                (tmp / split).mkdir()
                _write_into(dataset, tmp / split, samples_per_shard, data.num_classes)

    return atomic_write_dir(Path(out_dir), fill)


def _write_into(dataset: Dataset, folder: Path, samples_per_shard: int, num_classes: int | None) -> None:
    if samples_per_shard <= 0:
        raise ConfigError("--samples-per-shard", f"must be > 0, got {samples_per_shard}")
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise UserError(f"nothing to write into {folder.name}: the data set is empty")
    transforms = _recorded_transforms(dataset)
    index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "shards": [], "num_samples": total}
    for number, start in enumerate(range(0, total, samples_per_shard)):
        stop = min(start + samples_per_shard, total)
        structure, names, columns = _columns(dataset, start, stop)
        name = f"shard-{number:05d}"
        for field, column in enumerate(columns):
            _save(folder / _file_name(name, field), column)
        fields = [
            {"name": n, "dtype": str(c.dtype), "shape": list(c.shape[1:])}
            | ({"transform": transforms[i]} if i in transforms else {})
            for i, (n, c) in enumerate(zip(names, columns))
        ]
        if number == 0:
            index |= {"structure": structure, "fields": fields}
        elif fields != index["fields"] or structure != index["structure"]:
            raise UserError(
                f"samples {start}..{stop - 1} differ in structure, dtype or shape from the first ones "
                f"({fields} vs {index['fields']})",
                "shards hold samples of one shape and dtype per field",
            )
        index["shards"].append({"name": name, "num_samples": stop - start})
    if num_classes is not None:
        index["num_classes"] = int(num_classes)
    with open(folder / INDEX, "w") as f:
        json.dump(index, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _recorded_transforms(dataset: Dataset) -> dict[int, dict[str, Any]]:
    """The batch transform of an in-memory image set (data/in_memory.py), as index.json records it."""
    transform = getattr(dataset, "batch_transform", None)
    if transform is None or not isinstance(dataset, TensorDataset):
        return {}
    if transform.is_random:
        raise UserError(
            "this data set draws random crops or flips per batch, which shards do not record",
            "write the shards without them (data.args.transform.crop and .flip unset)",
        )
    mean = list(transform.mean) if transform.mean is not None else None
    std = list(transform.std) if transform.std is not None else None
    return {0: {"name": "image", "crop": transform.crop, "mean": mean, "std": std}}


def _columns(dataset: Dataset, start: int, stop: int) -> tuple[str, list[str], list[np.ndarray]]:
    """Samples [start, stop) as (structure, field names, one array per field)."""
    if isinstance(dataset, TensorDataset):
        # Whole tensors sliced (an in-memory image set's stored uint8, not its transformed __getitem__).
        return "tuple", [str(i) for i in range(len(dataset.tensors))], [_array(t[start:stop]) for t in dataset.tensors]
    getitems = getattr(dataset, "__getitems__", None)
    indices = list(range(start, stop))
    samples = getitems(indices) if callable(getitems) else [dataset[i] for i in indices]
    try:
        batch = default_collate(samples)
    except (TypeError, RuntimeError) as exc:
        raise UserError(
            f"cannot stack samples {start}..{stop - 1} into arrays: {exc}",
            "shards hold samples of tensors or numbers of one shape per field",
        ) from None
    if isinstance(batch, torch.Tensor):
        return "tensor", ["0"], [_array(batch)]
    if isinstance(batch, dict):
        return "dict", [str(k) for k in batch], [_array(v, str(k)) for k, v in batch.items()]
    if isinstance(batch, (list, tuple)):
        return "tuple", [str(i) for i in range(len(batch))], [_array(v, str(i)) for i, v in enumerate(batch)]
    raise UserError(f"samples of type {type(samples[0]).__name__} cannot be written as shards")


def _array(value: Any, field: str = "0") -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise UserError(
            f"field {field} of the samples is {type(value).__name__}, not a tensor or a number",
            "shards hold tensors (and numbers): turn strings and nested values into tensors first",
        )
    if value.dtype == torch.bfloat16 or value.is_complex():
        raise UserError(f"field {field} is {value.dtype}, which .npy files do not hold", "convert it to float32")
    return value.detach().cpu().contiguous().numpy()


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
