"""Multi-label classification: each sample carries several of 5 labels at once. BCEWithLogitsLoss over
5 logits, a torchmetrics macro F1 (MultilabelF1Score), a per-sample label accuracy. The data is
scikit-learn's seeded generator `make_multilabel_classification` (bag-of-words-like counts).

    python examples/multilabel.py examples/multilabel.yaml
    torchrun --standalone --nproc_per_node=2 examples/multilabel.py examples/multilabel.yaml
"""

import sys

import numpy as np
import torch
from sklearn.datasets import make_multilabel_classification
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MultilabelF1Score

import distrain

NUM_LABELS = 5


def load(seed, num_train, num_test):
    x, y = make_multilabel_classification(
        n_samples=num_train + num_test, n_features=20, n_classes=NUM_LABELS, n_labels=2, random_state=seed
    )
    x = np.log1p(x)
    x = (x - x[:num_train].mean(axis=0)) / (x[:num_train].std(axis=0) + 1e-6)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    return TensorDataset(x[:num_train], y[:num_train]), TensorDataset(x[num_train:], y[num_train:])


def main():
    cfg = distrain.load_config(sys.argv[1], sys.argv[2:])
    train, test = load(cfg.seed, cfg.user["num_train"], cfg.user["num_test"])
    torch.manual_seed(cfg.seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, NUM_LABELS))
    result = distrain.fit(
        cfg,
        model=model,
        train_data=train,
        test_data=test,
        loss=nn.BCEWithLogitsLoss(),
        metrics={"f1": MultilabelF1Score(num_labels=NUM_LABELS, average="macro")},
    )
    if distrain.is_main_process():
        print(f"test macro F1 {result['test_f1']:.4f} | label accuracy {result['test_accuracy']:.4f}")


if __name__ == "__main__":
    distrain.run_main(main)
