"""Full-batch L-BFGS: an optimizer whose step takes a closure, given to distrain.fit as it is.

distrain builds the closure (forward, the loss over the global batch, backward, the gradient exchange)
and returns the global batch's loss summed over the ranks, so every rank's line search sees the same
loss and takes the same path. The 97 training points are one global batch (data.global_batch_size: 97):
on 2 processes one rank takes 49 samples and the other 48, and the loss is still the mean over all 97.

    python examples/lbfgs.py examples/lbfgs.yaml                              # one CPU process
    torchrun --standalone --nproc_per_node=2 examples/lbfgs.py examples/lbfgs.yaml
    python examples/lbfgs.py examples/lbfgs.yaml --step                       # the same through step=
"""

import sys

import torch
from torch import nn
from torch.utils.data import Dataset

import distrain


class Curve(Dataset):
    """y = sin(3x) + noise at n points x of [-1, 1], drawn from `seed`; the sample is the Legendre
    polynomials P1(x)..P8(x) (a polynomial fit: least squares, well conditioned, one minimum, which L-BFGS
    finds from any start)."""

    def __init__(self, n, seed, degree=8):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, generator=g) * 2 - 1
        p = [torch.ones_like(x), x]
        for k in range(1, degree):
            p.append(((2 * k + 1) * x * p[k] - k * p[k - 1]) / (k + 1))
        self.x = torch.cat(p[1:], dim=1)
        self.y = torch.sin(3 * x) + 0.05 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def squared_errors(model, batch):
    """The step= form: per-sample losses [N] (distrain makes the global batch's mean of them)."""
    x, y = batch
    return ((model(x) - y) ** 2).mean(dim=1)


def main(argv):
    use_step = "--step" in argv
    cfg = distrain.load_config(argv[0], [a for a in argv[1:] if a != "--step"])
    torch.manual_seed(cfg.seed)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=20, history_size=10, line_search_fn="strong_wolfe"
    )
    data = dict(train_data=Curve(97, seed=1), test_data=Curve(200, seed=2))
    if use_step:
        result = distrain.fit(cfg, model=model, optimizer=optimizer, step=squared_errors, **data)
    else:
        result = distrain.fit(cfg, model=model, optimizer=optimizer, loss=nn.MSELoss(), **data)
    if distrain.is_main_process():
        print(f"test loss {result['test_loss']:.6f}")
        torch.save(model.state_dict(), f"{result['run_dir']}/model.pt")


if __name__ == "__main__":
    distrain.run_main(lambda: main(sys.argv[1:]))
