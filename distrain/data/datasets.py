"""Data sets by name. Every rank builds the same data from the seed, so no rank has to send it.

Tabular sets are `TensorDataset`s of float32 features and int64 class labels, which lets the batch source
take its fast path (indexing whole tensors) instead of a DataLoader.
"""

from __future__ import annotations

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


REGISTRY: dict[str, Callable[[DataConfig, int], DataSets]] = {
    "xor": _xor,
    "breast_cancer": _sklearn("load_breast_cancer"),
    "wine": _sklearn("load_wine"),
}


def build_datasets(cfg: DataConfig, seed: int) -> DataSets:
    return REGISTRY[cfg.name](cfg, seed)
