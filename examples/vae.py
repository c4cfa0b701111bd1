"""pytorch/examples' variational auto-encoder (vae/main.py: its VAE and loss_function, unchanged) trained
with distrain.fit and its own training step: the model returns (recon, mu, logvar), not outputs for a
loss(outputs, targets), so the script says what one step minimises.

    python examples/vae.py examples/vae.yaml ROOT [overrides]       # ROOT holds MNIST/raw
    torchrun --standalone --nproc_per_node=2 examples/vae.py examples/vae.yaml ROOT

loss_function returns the loss SUMMED over the batch; the step hands it over as `loss_sum`, so distrain
divides by the global batch size (the gradient of the per-sample mean, on any number of processes) and
reports the per-sample mean, the figure the original script prints (test_loss / len(dataset)).
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import distrain


class VAE(nn.Module):
    def __init__(self):
        super().__init__()

        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


# Reconstruction + KL divergence losses summed over all elements and batch
def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")

    # see Appendix B from VAE paper:
    # Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    # https://arxiv.org/abs/1312.6114
    # 0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2)
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    return BCE + KLD


def step(model, batch):
    """One batch's loss: loss_function's sum over the batch, declared as such."""
    x, _ = batch
    recon, mu, logvar = model(x)
    return {"loss_sum": loss_function(recon, x, mu, logvar)}


def mnist(root, num_train=2000, num_test=1000):
    """The first MNIST images as torchvision's ToTensor gives them (floats in [0, 1]), with their labels."""
    from torchvision.datasets import MNIST

    def tensors(train, n):
        d = MNIST(root, train=train, download=False)
        return TensorDataset(d.data[:n].unsqueeze(1).float() / 255, d.targets[:n])

    return tensors(True, num_train), tensors(False, num_test)


def main(config, root, *overrides):
    cfg = distrain.load_config(config, list(overrides))
    train, test = mnist(root)
    torch.manual_seed(cfg.seed)
    model = VAE()
    result = distrain.fit(cfg, model=model, train_data=train, test_data=test, step=step)
    if distrain.is_main_process():
        print(f"train loss {result.train['loss']:.4f} | test loss {result.test['loss']:.4f} (per sample)")


if __name__ == "__main__":
    distrain.run_main(main, *sys.argv[1:])
