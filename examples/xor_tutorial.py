"""The continuous-XOR tutorial as a user script: its own SimpleClassifier(nn.Module) and
XORDataset(Dataset) returning (x, y) tuples, BCEWithLogitsLoss, a torchmetrics F1 score, a plot of the
curves and `torch.save` of the trained weights: the tutorial's code, with distrain.fit as the loop.

    python examples/xor_tutorial.py examples/xor.yaml                       # one CPU process
    torchrun --standalone --nproc_per_node=2 examples/xor_tutorial.py examples/xor.yaml
    accelerate launch --multi_gpu --num_processes 2 examples/xor_tutorial.py examples/xor.yaml engine=accelerate
    srun --ntasks=2 python examples/xor_tutorial.py examples/xor.yaml      # inside a SLURM allocation
"""

import sys

import torch
from torch import nn
from torch.utils.data import Dataset
from torchmetrics.classification import BinaryF1Score

import distrain


class SimpleClassifier(nn.Module):
    def __init__(self, num_inputs, num_hidden, num_outputs):
        super().__init__()
        self.linear1 = nn.Linear(num_inputs, num_hidden)
        self.act_fn = nn.Tanh()
        self.linear2 = nn.Linear(num_hidden, num_outputs)

    def forward(self, x):
        return self.linear2(self.act_fn(self.linear1(x)))


class XORDataset(Dataset):
    """Points near the corners of {0,1}^2 with Gaussian noise; label = x1 XOR x2."""

    def __init__(self, size, std=0.1, seed=0):
        generator = torch.Generator().manual_seed(seed)
        data = torch.randint(0, 2, (size, 2), generator=generator).to(torch.float32)
        self.label = (data.sum(dim=1) == 1).to(torch.long)
        self.data = data + std * torch.randn(data.shape, generator=generator)

    def __len__(self):
        return self.data.shape[0]

    def __getitem__(self, idx):
        return self.data[idx], self.label[idx]


def main():
    cfg = distrain.load_config(sys.argv[1], sys.argv[2:])
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in one process
    model = SimpleClassifier(num_inputs=2, num_hidden=4, num_outputs=1)
    result = distrain.fit(
        cfg,
        model=model,
        train_data=XORDataset(2500, seed=1),
        test_data=XORDataset(500, seed=2),
        loss=nn.BCEWithLogitsLoss(),
        metrics={"f1": BinaryF1Score()},
    )
    if distrain.is_main_process():
        print(
            f"test loss {result['test_loss']:.4f} | accuracy {result['test_accuracy']:.4f} | F1 {result['test_f1']:.4f}"
        )
        torch.save(model.state_dict(), f"{result['run_dir']}/model.pt")  # the trained weights, unwrapped


if __name__ == "__main__":
    distrain.run_main(main)
