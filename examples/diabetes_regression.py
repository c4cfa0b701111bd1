"""Regression: scikit-learn's diabetes set (442 patients, 10 features, a disease-progression score),
a small MLP of the user's, MSELoss, and R^2 and MAE as metrics (torchmetrics' R2Score, distrain's mae).
The score is standardized with the training mean and std; R^2 does not depend on that scale.

    python examples/diabetes_regression.py examples/diabetes.yaml
    torchrun --standalone --nproc_per_node=2 examples/diabetes_regression.py examples/diabetes.yaml
"""

import sys

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.regression import R2Score

import distrain


class Regressor(nn.Module):
    def __init__(self, num_features, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)  # one value per sample, shaped like the targets


def load(test_fraction, seed):
    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(round(test_fraction * len(y)))
    test, train = order[:cut], order[cut:]
    x = (x - x[train].mean(axis=0)) / x[train].std(axis=0)
    y = (y - y[train].mean()) / y[train].std()

    def tensors(idx):
        return TensorDataset(torch.tensor(x[idx], dtype=torch.float32), torch.tensor(y[idx], dtype=torch.float32))

    return tensors(train), tensors(test)


def main():
    cfg = distrain.load_config(sys.argv[1], sys.argv[2:])
    train, test = load(cfg.user["test_fraction"], cfg.seed)
    torch.manual_seed(cfg.seed)
    model = Regressor(train.tensors[0].shape[1], cfg.user["width"])
    result = distrain.fit(
        cfg,
        model=model,
        train_data=train,
        test_data=test,
        loss=nn.MSELoss(),
        metrics={"r2": R2Score(), "mae": lambda preds, targets: (preds - targets).abs()},
    )
    if distrain.is_main_process():
        print(f"test R^2 {result['test_r2']:.4f} | MAE {result['test_mae']:.4f} (in standard deviations)")


if __name__ == "__main__":
    distrain.run_main(main)
