"""A user's GAN script: a generator and a discriminator (fit(model={"g": G, "d": D})), their optimizers
by name, and a step that steps both (the non-saturating GAN loss), on 2-D points from a ring of Gaussians.

    python tests/helpers/gan.py CONFIG [overrides]
    torchrun ... tests/helpers/gan.py CONFIG [overrides]
"""

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import distrain

NOISE = 4


def ring(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.randint(0, 8, (n,), generator=g).float() / 8
    points = torch.stack([angle.cos(), angle.sin()], dim=1) * 2 + 0.05 * torch.randn(n, 2, generator=g)
    return TensorDataset(points, torch.zeros(n))


def models():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(NOISE, 32), nn.ReLU(), nn.Linear(32, 2))
    d = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    return {"g": g, "d": d}


def step(models, batch, optimizers):
    real, _ = batch
    g, d = models["g"], models["d"]
    ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
    fake = g(torch.randn(len(real), NOISE))
    optimizers["d"].zero_grad()
    d_loss = F.binary_cross_entropy_with_logits(d(real), ones) + F.binary_cross_entropy_with_logits(
        d(fake.detach()), zeros
    )
    d_loss.backward()
    optimizers["d"].step()
    optimizers["g"].zero_grad()
    g_loss = F.binary_cross_entropy_with_logits(d(fake), ones)
    g_loss.backward()
    optimizers["g"].step()
    return {"loss": g_loss.detach(), "d_loss": d_loss.detach()}


class SameWeights:
    """Checks at the end that every rank holds the same weights (each model's gradients were averaged)."""

    def on_train_end(self, run, result):
        import torch.distributed as dist

        if run.world_size == 1:
            return
        sums = torch.stack([p.detach().double().sum() for p in run.model.parameters()])
        gathered = [torch.zeros_like(sums) for _ in range(run.world_size)]
        dist.all_gather(gathered, sums)
        assert all(torch.equal(gathered[0], g) for g in gathered), "the ranks' weights differ"
        if run.rank == 0:
            print(f"weights agree on {run.world_size} ranks")


def main(config, *overrides):
    cfg = distrain.load_config(config, list(overrides))
    distrain.fit(
        cfg,
        model=models(),
        optimizer={
            "g": lambda params: torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999)),
            "d": lambda params: torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999)),
        },
        train_data=ring(2048),
        step=step,
        callbacks=[SameWeights()],
    )


if __name__ == "__main__":
    distrain.run_main(main, *sys.argv[1:])
