"""The price of `data.seed_samples` (on by default): each sample read through a DataLoader under its own
seed from (seed, epoch, index), so that augmentation drawn in the data set is the same on any rank,
worker or world size (distrain/data/seeded.py). Times one epoch of a DataLoader over the same batches,
plain (as data.seed_samples=false reads) and seeded (as distrain reads by default), in interleaved
rounds; prints samples/s and the median of the per-round ratios.

    .venv/bin/python bench/seeded.py [--rounds 7] [--samples 4096] [--workers 0,2]

Two data sets: CIFAR-sized images (3x40x40 uint8 tensors) through torchvision's RandomResizedCrop(32)
and RandomHorizontalFlip, as image training reads them; and the same images with no transform, where
the seeding is all the extra work there is (its cost per sample, alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from distrain.data.seeded import Keyed, SeededSamples  # noqa: E402

BATCH = 64


class Images(Dataset):
    """`n` generated 3x40x40 uint8 images, each read through `transform` (or as it is)."""

    def __init__(self, n: int, transform=None):
        self.images = torch.randint(
            0, 256, (n, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), index % 10


def epoch_seconds(dataset: Dataset, workers: int, seeded: bool) -> float:
    batches = [list(range(i, min(i + BATCH, len(dataset)))) for i in range(0, len(dataset), BATCH)]
    if seeded:  # as distrain's loader wraps the data set (data/batches.py)
        dataset, batches = SeededSamples(dataset, seed=0), Keyed(batches, lambda: 0)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--workers", default="0,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    augment = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip()])
    print(f"{args.samples} samples a run, batch {BATCH}, {args.rounds} rounds; torch {torch.__version__}")
    for name, transform in (("crop+flip", augment), ("no transform", None)):
        dataset = Images(args.samples, transform)
        for workers in (int(w) for w in args.workers.split(",")):
            epoch_seconds(dataset, workers, True)  # warm-up
            plain, seeded = [], []
            for r in range(args.rounds):
                for on in (False, True) if r % 2 == 0 else (True, False):  # alternate which goes first
                    (seeded if on else plain).append(epoch_seconds(dataset, workers, on))
            ratio = statistics.median(p / s for p, s in zip(plain, seeded))
            extra = (statistics.median(seeded) - statistics.median(plain)) / args.samples * 1e6
            print(
                f"  {name:<12} workers {workers}: plain {args.samples / statistics.median(plain):9,.0f} samples/s, "
                f"seeded {args.samples / statistics.median(seeded):9,.0f} samples/s = {ratio:.2f}x plain "
                f"({extra:+.1f} us a sample)"
            )


if __name__ == "__main__":
    main()
