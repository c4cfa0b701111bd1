"""A torchvision ResNet-18 in exact mode: BatchNorm, and random augmentation (RandomResizedCrop,
RandomHorizontalFlip) drawn inside the data set in DataLoader workers, bitwise the same weights, BatchNorm
buffers and figures on 1, 2 and 4 processes, and across a resume on another number of processes.

Exact mode runs each chunk of the global batch alone: BatchNorm normalises each chunk with its own
statistics, and the running statistics are replayed in chunk order (strategies/exact.py). Each sample's
augmentation is drawn under a seed from (seed, epoch, sample index) (data.seed_samples, data/seeded.py),
whichever worker of whichever rank reads it.

    python examples/exact_resnet.py examples/exact_resnet.yaml                 # one CPU process
    torchrun --standalone --nproc_per_node=4 examples/exact_resnet.py examples/exact_resnet.yaml
"""

import sys

import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.transforms import v2

import distrain


class Squares(Dataset):
    """n generated 40x40 RGB images of 4 classes: a bright square in quadrant k of a noisy background,
    cropped and flipped at random to 32x32 when read (the tutorials' transform in __getitem__)."""

    def __init__(self, n, seed, train=True):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(4, (n,), generator=g)
        self.images = (torch.rand(n, 3, 40, 40, generator=g) * 96).to(torch.uint8)
        for i, k in enumerate(self.labels.tolist()):
            top, left = 20 * (k // 2) + 4, 20 * (k % 2) + 4
            self.images[i, :, top : top + 12, left : left + 12] += 128
        crop = v2.RandomResizedCrop(32, scale=(0.6, 1.0), antialias=True) if train else v2.CenterCrop(32)
        flips = [v2.RandomHorizontalFlip()] if train else []
        self.transform = v2.Compose([crop, *flips, v2.ToDtype(torch.float32, scale=True)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def main(argv):
    cfg = distrain.load_config(argv[0], argv[1:])
    torch.manual_seed(cfg.seed)
    model = torchvision.models.resnet18(num_classes=4)
    result = distrain.fit(
        cfg, model=model, train_data=Squares(256, seed=1), test_data=Squares(128, seed=2, train=False)
    )
    if distrain.is_main_process():
        print(f"test accuracy {result['test_accuracy']:.4f}")
        torch.save(model.state_dict(), f"{result['run_dir']}/model.pt")  # BatchNorm buffers included


if __name__ == "__main__":
    distrain.run_main(lambda: main(sys.argv[1:]))
