"""Logistic regression on scikit-learn's breast-cancer set, written as in the tutorials: the user's own
nn.Module, the data as TensorDatasets (in memory: distrain's fast path), BCEWithLogitsLoss.

    python examples/breast_cancer.py examples/breast_cancer.yaml
    torchrun --standalone --nproc_per_node=2 examples/breast_cancer.py examples/breast_cancer.yaml
"""

import sys

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn
from torch.utils.data import TensorDataset

import distrain


class LogisticRegression(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.linear = nn.Linear(num_features, 1)

    def forward(self, x):
        return self.linear(x)  # a logit: BCEWithLogitsLoss applies the sigmoid


def load(test_fraction, seed):
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[: int(round(test_fraction * len(y)))], order[int(round(test_fraction * len(y))) :]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)  # training statistics only

    def tensors(idx):
        return TensorDataset(torch.tensor((x[idx] - mean) / std, dtype=torch.float32), torch.tensor(y[idx]))

    return tensors(train), tensors(test)


def main():
    cfg = distrain.load_config(sys.argv[1], sys.argv[2:])
    train, test = load(cfg.user["test_fraction"], cfg.seed)
    torch.manual_seed(cfg.seed)
    model = LogisticRegression(train.tensors[0].shape[1])
    result = distrain.fit(cfg, model=model, train_data=train, test_data=test, loss=nn.BCEWithLogitsLoss())
    if distrain.is_main_process():
        print(f"test accuracy {result['test_accuracy']:.4f}")


if __name__ == "__main__":
    distrain.run_main(main)
