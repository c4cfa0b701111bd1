import torch
from torch.utils.data import TensorDataset


def build(num_train: int = 2500, num_test: int = 500, noise_std: float = 0.1, seed: int = 0):
    """Continuous XOR as (train, test) TensorDatasets; `seed` is passed in by distrain (the run's seed)."""

    def make(n, generator):
        corners = torch.randint(0, 2, (n, 2), generator=generator).float()
        return TensorDataset(
            corners + noise_std * torch.randn(n, 2, generator=generator), (corners.sum(dim=1) == 1).long()
        )

    return make(num_train, torch.Generator().manual_seed(seed)), make(num_test, torch.Generator().manual_seed(seed + 1))
