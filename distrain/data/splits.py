"""Which samples are train, val and test: the data set named by the config (built-in or import path) or
given to distrain.fit, a validation split held out by seed, and what is known of the data (DataInfo).

    data = build_splits(cfg.data, seed)                                  # from the config
    data = build_splits(cfg.data, seed, train=my_train, test=my_test)    # the user's Dataset objects
    info = describe_data(data, target_key)                               # classes, shapes: before the model
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from distrain.config.registry import call, resolve
from distrain.config.schema import DataConfig
from distrain.data.datasets import DataSets
from distrain.data.shards import first_samples, has_length, is_indexable, is_stream
from distrain.data.structures import leaves, split_sample
from distrain.errors import ConfigError, UserError

log = logging.getLogger("distrain")


@dataclass(frozen=True)
class DataInfo:
    """What is known of the data before the model exists (from the data set and its first sample)."""

    num_classes: int | None  # classification with labels 0..K-1, when known
    default_loss: str | None  # the data set's own loss for `loss.name: auto` (e.g. mse)
    target_shape: tuple[int, ...]  # one sample's target shape: () for a label or a scalar
    target_is_integer: bool
    input_shape: tuple[int, ...] | None  # one sample's input shape (a single tensor input)

    def model_arguments(self, num_outputs: int | None) -> dict[str, Any]:
        """Values a model's parameters receive by name when the config does not set them."""
        shape = self.input_shape
        return {
            "num_inputs": int(torch.Size(shape).numel()) if shape else None,
            "num_outputs": num_outputs,
            "num_classes": self.num_classes,
            "input_shape": tuple(shape) if shape else None,
            "in_channels": shape[0] if shape and len(shape) == 3 else None,
        }


def build_splits(
    cfg: DataConfig,
    seed: int,
    *,
    train: Dataset | None = None,
    val: Dataset | None = None,
    test: Dataset | None = None,
    allow_download: bool = True,
) -> DataSets:
    """The run's splits. `allow_download`: only global rank 0 downloads (the others wait at a barrier,
    then read the files): a data set function's `download` argument is forced off elsewhere."""
    if train is not None:
        data = DataSets(train, test, val)
    elif cfg.name is None:
        raise ConfigError(
            "data.name",
            "is not set and no data was given",
            "name a built-in data set or a function module:attribute, or pass train_data= to distrain.fit",
        )
    else:
        builder = resolve("data", cfg.name, "data.name")
        args = dict(cfg.args)
        if not allow_download and args.get("download"):
            args["download"] = False
        data = as_datasets(call(builder, args, "data.args", known={"seed": seed}), cfg.name)
    data = with_streams(data)
    if data.val is None and cfg.val_fraction > 0 and is_stream(data.train) and not is_indexable(data.train):
        raise ConfigError(
            "data.val_fraction",
            "cannot hold a validation split out of a stream (its samples are not indexed)",
            "give a validation split of its own (the data set function's (train, val, test)), or 0",
        )
    if data.val is None and cfg.val_fraction > 0:
        train_part, val_part = hold_out(data.train, cfg.val_fraction, seed)
        data = dataclasses.replace(data, train=train_part, val=val_part)
    for split, dataset in (("train", data.train), ("val", data.val), ("test", data.test)):
        if dataset is not None and has_length(dataset) and len(dataset) == 0:  # type: ignore[arg-type]
            raise UserError(f"the {split} split is empty", "check the data set (or data.val_fraction)")
    return data


def with_streams(data: DataSets) -> DataSets:
    """Hugging Face IterableDatasets as sharded streams (data/hf.py; `datasets` is imported only when one
    is there), and the class count of a Hugging Face ClassLabel target."""
    from distrain.data.hf import as_sharded, is_hf_dataset, is_hf_stream, num_classes_of

    num_classes = data.num_classes
    if num_classes is None and (is_hf_dataset(data.train) or is_hf_stream(data.train)):
        num_classes = num_classes_of(data.train)
    return dataclasses.replace(
        data,
        train=as_sharded(data.train),
        val=as_sharded(data.val) if data.val is not None else None,
        test=as_sharded(data.test) if data.test is not None else None,
        num_classes=num_classes,
    )


def as_datasets(result: Any, name: str) -> DataSets:
    """What a data set function returned, as DataSets: DataSets, (train, test) or (train, val, test)."""
    if isinstance(result, DataSets):
        return result
    if isinstance(result, (tuple, list)) and len(result) in (2, 3):
        if len(result) == 2:
            return DataSets(result[0], result[1])
        return DataSets(result[0], result[2], result[1])
    raise ConfigError(
        "data.name",
        f"{name} returned {type(result).__name__}; a data set function must return "
        "(train, test), (train, val, test) or distrain.DataSets",
    )


def hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split `fraction` of the training set off as validation, by a seeded permutation (the same on every
    rank). In-memory tensors stay tensors, so both parts keep the fast path."""
    n = len(train)  # type: ignore[arg-type]
    order = np.random.default_rng(seed + 7919).permutation(n)
    num_val = max(1, int(round(fraction * n)))
    val_idx, train_idx = sorted(order[:num_val].tolist()), sorted(order[num_val:].tolist())
    if hasattr(train, "subset"):  # in-memory images: keep them so; the held-out part is not augmented
        return (
            train.subset(torch.tensor(train_idx), evaluation=False),
            train.subset(torch.tensor(val_idx), evaluation=True),
        )
    if isinstance(train, TensorDataset):

        def part(idx: list[int]) -> TensorDataset:
            index = torch.tensor(idx)
            return TensorDataset(*(t[index] for t in train.tensors))

        return part(train_idx), part(val_idx)
    return Subset(train, train_idx), Subset(train, val_idx)


def probe_batch(dataset: Dataset, target_key: str | None, size: int = 2) -> tuple[Any, Any]:
    """(inputs, targets) of the first `size` samples, collated as a batch (for describe_data and the probe)."""
    return split_sample(first_batch(dataset, size), target_key)


def first_batch(dataset: Dataset, size: int = 2) -> Any:
    """The first `size` samples collated as a batch, as the data set yields them ((x, y), a dict, ...)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        columns = [t[:size] for t in dataset.tensors]
        if hasattr(dataset, "batch_transform"):
            columns[0] = dataset.batch_transform(columns[0])
        return columns
    try:
        if is_stream(dataset):  # read in order: its first samples (of its first shard)
            samples = first_samples(dataset, size)
        else:
            samples = [dataset[i] for i in range(min(size, len(dataset)))]  # type: ignore[arg-type]
        batch = default_collate(samples) if samples else None
    except Exception as exc:
        raise UserError(f"cannot read the first samples of the training set: {type(exc).__name__}: {exc}") from None
    if batch is None:
        raise UserError("the training set gave no samples", "check the data set")
    return batch


def describe_data(data: DataSets, target_key: str | None) -> DataInfo:
    inputs, targets = probe_batch(data.train, target_key, size=1)
    input_shape = tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else None
    target = leaves(targets)[0] if leaves(targets) else None
    target_shape = tuple(target.shape[1:]) if target is not None else ()
    is_integer = target is not None and not target.is_floating_point() and not target.is_complex()
    num_classes = data.num_classes
    if num_classes is None and is_integer and target_shape == () and isinstance(data.train, TensorDataset):
        labels = data.train.tensors[-1]
        if labels.min() >= 0:
            num_classes = int(labels.max()) + 1
            log.info("data: integer targets 0..%d in the training set: %d classes", num_classes - 1, num_classes)
    return DataInfo(
        num_classes=num_classes,
        default_loss=data.loss,
        target_shape=target_shape,
        target_is_integer=is_integer,
        input_shape=input_shape,
    )
