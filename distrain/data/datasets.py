"""Data sets by name. Every rank builds the same data from the seed, so no rank has to send it.

Tabular sets are `TensorDataset`s of float32 features and int64 class labels, which lets the batch source
take its fast path (indexing whole tensors) instead of a DataLoader.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from distrain.config import DataConfig


@dataclass(frozen=True)
class DataSets:
    train: Dataset
    test: Dataset
    num_features: int
    num_classes: int
    input_shape: tuple[int, ...] = ()  # one sample's shape, e.g. (1, 28, 28); () for flat features


def make_xor(num_samples: int, noise_std: float, generator: torch.Generator) -> TensorDataset:
    """The tutorial's continuous XOR: corners of {0,1}^2 plus Gaussian noise; label = x1 XOR x2."""
    corners = torch.randint(0, 2, (num_samples, 2), generator=generator).to(torch.float32)
    labels = (corners.sum(dim=1) == 1).to(torch.int64)
    points = corners + noise_std * torch.randn(num_samples, 2, generator=generator)
    return TensorDataset(points, labels)


def _xor(cfg: DataConfig, seed: int) -> DataSets:
    # Separate streams for train and test, so changing num_train does not change the test points.
    train = make_xor(cfg.num_train, cfg.noise_std, torch.Generator().manual_seed(seed))
    test = make_xor(cfg.num_test, cfg.noise_std, torch.Generator().manual_seed(seed + 1))
    return DataSets(train, test, num_features=2, num_classes=2)


def split_and_standardize(features: np.ndarray, labels: np.ndarray, test_fraction: float,
                          seed: int, num_classes: int) -> DataSets:
    """Split by a seeded permutation, then standardize with the *training* mean and std (no test leakage)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = max(1, int(round(test_fraction * len(labels))))
    test_idx, train_idx = order[:num_test], order[num_test:]
    mean = features[train_idx].mean(axis=0)
    std = features[train_idx].std(axis=0)
    std[std == 0] = 1.0

    def tensors(idx: np.ndarray) -> TensorDataset:
        x = torch.from_numpy(((features[idx] - mean) / std).astype(np.float32))
        return TensorDataset(x, torch.from_numpy(labels[idx].astype(np.int64)))

    return DataSets(tensors(train_idx), tensors(test_idx), features.shape[1], num_classes)


def _sklearn(loader_name: str) -> Callable[[DataConfig, int], DataSets]:
    def build(cfg: DataConfig, seed: int) -> DataSets:
        import sklearn.datasets  # bundled copies: nothing is downloaded

        bunch = getattr(sklearn.datasets, loader_name)()
        return split_and_standardize(bunch.data, bunch.target, cfg.test_fraction, seed,
                                     num_classes=len(bunch.target_names))

    return build


def _digits(cfg: DataConfig, seed: int) -> DataSets:
    """scikit-learn's bundled 8x8 digits as 1x8x8 images in [0, 1] (optionally resized once, here, so the
    tensor fast path still applies), split by seed, normalized with training statistics."""
    import sklearn.datasets
    import torch.nn.functional as F

    bunch = sklearn.datasets.load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if cfg.image_size:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    num_test = max(1, int(round(cfg.test_fraction * len(labels))))
    test_idx, train_idx = order[:num_test], order[num_test:]
    if cfg.normalize:
        mean, std = images[train_idx].mean(), images[train_idx].std()
        images = (images - mean) / std
    return DataSets(TensorDataset(images[train_idx], labels[train_idx]),
                    TensorDataset(images[test_idx], labels[test_idx]), num_features=images[0].numel(),
                    num_classes=10, input_shape=tuple(images.shape[1:]))


def _csv(cfg: DataConfig, seed: int) -> DataSets:
    """A tabular CSV: numeric feature columns and one label column (by name, or by index); labels are
    mapped to 0..K-1 in sorted order. Split by seed and standardized like the bundled sets."""
    from pathlib import Path

    from distrain.errors import ConfigError

    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError("data.path", f"{path} does not exist", "point data.path at the CSV file")
    rows = np.genfromtxt(path, delimiter=",", dtype=str, encoding="utf-8")
    rows = np.atleast_2d(rows)
    header = [h.strip() for h in rows[0]] if cfg.header else None
    body = rows[1:] if cfg.header else rows
    if cfg.label_index is not None:
        column = cfg.label_index
        if not -body.shape[1] <= column < body.shape[1]:
            raise ConfigError("data.label_index", f"{column} is outside the {body.shape[1]} columns of {path}")
    elif header is not None and cfg.label_column in header:
        column = header.index(cfg.label_column)
    else:
        raise ConfigError("data.label_column", f"{cfg.label_column!r} is not a column of {path}",
                          f"columns: {', '.join(header) if header else '(no header row)'}; or set data.label_index")
    raw_labels = body[:, column]
    features = np.delete(body, column, axis=1)
    try:
        features = features.astype(np.float64)
    except ValueError as exc:
        raise ConfigError("data.path", f"{path} has a non-numeric feature value ({exc})") from None
    classes = sorted(set(raw_labels.tolist()), key=lambda v: (float(v) if _is_number(v) else float("inf"), v))
    labels = np.array([classes.index(v) for v in raw_labels])
    return split_and_standardize(features, labels, cfg.test_fraction, seed, num_classes=len(classes))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _images(name: str) -> Callable[[DataConfig, int], DataSets]:
    def build(cfg: DataConfig, seed: int) -> DataSets:
        from distrain.data import images

        return images.BUILDERS[name](cfg, seed)

    return build


def _synthetic(cfg: DataConfig, seed: int) -> DataSets:
    """Random images (standard normal) with random labels, in memory: for benchmarks and smoke tests,
    where only the shapes matter. Seeded, separate streams for train and test like xor."""
    shape = tuple(cfg.sample_shape)

    def make(n: int, generator: torch.Generator) -> TensorDataset:
        return TensorDataset(torch.randn(n, *shape, generator=generator),
                             torch.randint(0, cfg.num_classes, (n,), generator=generator))

    train = make(cfg.num_train, torch.Generator().manual_seed(seed))
    test = make(cfg.num_test, torch.Generator().manual_seed(seed + 1))
    return DataSets(train, test, num_features=math.prod(shape), num_classes=cfg.num_classes, input_shape=shape)


REGISTRY: dict[str, Callable[[DataConfig, int], DataSets]] = {
    "xor": _xor,
    "synthetic": _synthetic,
    "breast_cancer": _sklearn("load_breast_cancer"),
    "wine": _sklearn("load_wine"),
    "digits": _digits,
    "csv": _csv,
    **{name: _images(name) for name in ("mnist", "fashion_mnist", "cifar10", "image_folder", "csv_images")},
}


def build_datasets(cfg: DataConfig, seed: int, *, allow_download: bool = True) -> DataSets:
    """`allow_download`: only global rank 0 downloads (the others wait at a barrier, then read the files)."""
    if cfg.download and not allow_download:
        from dataclasses import replace

        cfg = replace(cfg, download=False)
    return REGISTRY[cfg.name](cfg, seed)
