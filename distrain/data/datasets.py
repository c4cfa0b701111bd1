"""Built-in data sets, each a function whose keyword arguments are its options (`data.args`).

    data: {name: xor, args: {num_train: 2500, noise_std: 0.1}, global_batch_size: 128}

A user's data set is named the same way (`data: {name: mypkg.data:build, args: {...}}`, a function
returning (train, test) or (train, val, test)) or handed to distrain.fit. These functions are registered
as import paths in distrain.config.registry exactly like a user's; `seed` is passed in by the run. Every rank
builds the same data from the seed, so no rank has to send it.

Tabular sets are `TensorDataset`s of float32 features and int64 class labels (float32 targets for
regression), which lets the batch source take its fast path (indexing whole tensors) instead of a
DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from distrain.errors import ConfigError


@dataclass(frozen=True)
class DataSets:
    """What a data set function may return instead of a tuple: the splits and what is known of them."""

    train: Dataset
    test: Dataset | None = None
    val: Dataset | None = None
    num_classes: int | None = None  # class labels 0..K-1 (classification), None otherwise or unknown
    loss: str | None = None  # the loss the data set is made for, when `loss.name: auto` (e.g. mse)
    num_features: int | None = None  # one sample's number of input values
    input_shape: tuple[int, ...] | None = None  # one sample's input shape, e.g. (1, 28, 28); (d,) for rows


def make_xor(num_samples: int, noise_std: float, generator: torch.Generator) -> TensorDataset:
    """The tutorial's continuous XOR: corners of {0,1}^2 plus Gaussian noise; label = x1 XOR x2."""
    corners = torch.randint(0, 2, (num_samples, 2), generator=generator).to(torch.float32)
    labels = (corners.sum(dim=1) == 1).to(torch.int64)
    points = corners + noise_std * torch.randn(num_samples, 2, generator=generator)
    return TensorDataset(points, labels)


def xor(*, num_train: int = 2500, num_test: int = 500, noise_std: float = 0.1, seed: int = 0) -> DataSets:
    """The tutorial's continuous XOR: `num_train`/`num_test` points, Gaussian noise of `noise_std`."""
    _positive(num_train=num_train, num_test=num_test)
    if noise_std < 0:
        raise ConfigError("data.args.noise_std", f"must be >= 0, got {noise_std}")
    # Separate streams for train and test, so changing num_train does not change the test points.
    train = make_xor(num_train, noise_std, torch.Generator().manual_seed(seed))
    test = make_xor(num_test, noise_std, torch.Generator().manual_seed(seed + 1))
    return DataSets(train, test, num_classes=2)


def _positive(**values: int) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"data.args.{key}", f"must be > 0, got {value}")


def _fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise ConfigError("data.args.test_fraction", f"must lie in (0, 1), got {test_fraction}")


def split_and_standardize(
    features: np.ndarray,
    labels: np.ndarray,
    test_fraction: float,
    seed: int,
    num_classes: int | None,
    loss: str | None = None,
) -> DataSets:
    """Split by a seeded permutation, then standardize with the *training* mean and std (no test leakage)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = max(1, int(round(test_fraction * len(labels))))
    test_idx, train_idx = order[:num_test], order[num_test:]
    mean = features[train_idx].mean(axis=0)
    std = features[train_idx].std(axis=0)
    std[std == 0] = 1.0

    label_type = np.int64 if num_classes is not None else np.float32

    def tensors(idx: np.ndarray) -> TensorDataset:
        x = torch.from_numpy(((features[idx] - mean) / std).astype(np.float32))
        return TensorDataset(x, torch.from_numpy(labels[idx].astype(label_type)))

    return DataSets(tensors(train_idx), tensors(test_idx), num_classes=num_classes, loss=loss)


def _bundled(loader_name: str, test_fraction: float, seed: int, regression: bool = False) -> DataSets:
    import sklearn.datasets  # bundled copies: nothing is downloaded

    _fraction(test_fraction)
    bunch = getattr(sklearn.datasets, loader_name)()
    if regression:
        return split_and_standardize(bunch.data, bunch.target, test_fraction, seed, num_classes=None, loss="mse")
    return split_and_standardize(bunch.data, bunch.target, test_fraction, seed, num_classes=len(bunch.target_names))


def breast_cancer(*, test_fraction: float = 0.2, seed: int = 0) -> DataSets:
    """scikit-learn's breast-cancer set (569 x 30, 2 classes), standardized, split by seed."""
    return _bundled("load_breast_cancer", test_fraction, seed)


def wine(*, test_fraction: float = 0.2, seed: int = 0) -> DataSets:
    """scikit-learn's wine set (178 x 13, 3 classes), standardized, split by seed."""
    return _bundled("load_wine", test_fraction, seed)


def diabetes(*, test_fraction: float = 0.2, seed: int = 0) -> DataSets:
    """scikit-learn's diabetes regression set (442 x 10, a disease-progression score), standardized
    features, the raw score as a float target; loss auto is mse."""
    return _bundled("load_diabetes", test_fraction, seed, regression=True)


def digits(
    *, image_size: int | None = None, normalize: bool = True, test_fraction: float = 0.2, seed: int = 0
) -> DataSets:
    """scikit-learn's bundled 8x8 digits as 1x8x8 images in [0, 1] (resized once to `image_size`, here,
    so the tensor fast path still applies), split by seed, normalized with training statistics."""
    import sklearn.datasets
    import torch.nn.functional as F

    _fraction(test_fraction)
    bunch = sklearn.datasets.load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    num_test = max(1, int(round(test_fraction * len(labels))))
    test_idx, train_idx = order[:num_test], order[num_test:]
    if normalize:
        mean, std = images[train_idx].mean(), images[train_idx].std()
        images = (images - mean) / std
    return DataSets(
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
        num_classes=10,
    )


def csv(
    *,
    path: str,
    label_column: str = "label",
    label_index: int | None = None,
    header: bool = True,
    task: Literal["auto", "classification", "regression"] = "auto",
    classes: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataSets:
    """A tabular CSV: numeric feature columns and one label column (by name, or by `label_index`).
    Classification maps the labels to 0..K-1: in the order of `classes` when given (a label outside them
    is an error), else sorted; regression keeps them as float targets (loss auto: mse). `task: auto` is
    classification for non-numeric or whole-number labels and regression for numbers with fractions, and
    the choice is logged. Split by seed and standardized. The file is checked first: a missing, empty or
    non-numeric cell, a short row or an empty file exits 2 naming the file, line and column."""
    import logging

    from distrain.data.tables import class_indices, numbers, read_table

    _fraction(test_fraction)
    table = read_table(Path(path), header=header)
    width = len(table.rows[0])
    if label_index is not None:
        if not -width <= label_index < width:
            raise ConfigError("data.args.label_index", f"{label_index} is outside the {width} columns of {path}")
        column = label_index % width
    elif table.names is not None and label_column in table.names:
        column = table.names.index(label_column)
    else:
        raise ConfigError(
            "data.args.label_column",
            f"{label_column!r} is not a column of {path}",
            f"columns: {', '.join(table.names) if table.names else '(no header row)'}; or set data.args.label_index",
        )
    features = numbers(table, [c for c in range(width) if c != column])
    raw_labels = [row[column] for row in table.rows]
    numeric = all(_is_number(v) for v in raw_labels)
    if task == "auto":
        fractional = classes is None and numeric and any(float(v) != round(float(v)) for v in raw_labels)
        task = "regression" if fractional else "classification"
        logging.getLogger("distrain").info(
            "data.args.task=auto: the labels of %s are %s, so this is %s (set data.args.task to change it)",
            path,
            "numbers with fractions" if fractional else "class names or whole numbers",
            task,
        )
    if task == "regression":
        if classes is not None:
            raise ConfigError("data.args.classes", "names classes, but data.args.task is regression")
        return split_and_standardize(
            features, numbers(table, [column])[:, 0], test_fraction, seed, num_classes=None, loss="mse"
        )
    labels, classes = class_indices(table, column, classes)
    return split_and_standardize(features, labels, test_fraction, seed, num_classes=len(classes))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def synthetic(
    *,
    sample_shape: tuple[int, ...] = (1, 28, 28),
    num_classes: int = 10,
    num_train: int = 2500,
    num_test: int = 500,
    seed: int = 0,
) -> DataSets:
    """Random images (standard normal) of `sample_shape` with random labels, in memory: for benchmarks and
    smoke tests, where only the shapes matter. Seeded, separate streams for train and test like xor."""
    _positive(num_train=num_train, num_test=num_test, num_classes=num_classes - 1)
    if not sample_shape or any(d <= 0 for d in sample_shape):
        raise ConfigError("data.args.sample_shape", f"must be positive sizes, got {list(sample_shape)}")

    def make(n: int, generator: torch.Generator) -> TensorDataset:
        return TensorDataset(
            torch.randn(n, *sample_shape, generator=generator), torch.randint(0, num_classes, (n,), generator=generator)
        )

    train = make(num_train, torch.Generator().manual_seed(seed))
    test = make(num_test, torch.Generator().manual_seed(seed + 1))
    return DataSets(train, test, num_classes=num_classes)
