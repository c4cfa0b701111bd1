"""The tutorials' custom image Dataset: an annotations CSV (file name, label) and a folder of images,
read with torchvision's read_image in __getitem__, a transform, (image, label) tuples; a small CNN of
the user's. Without images of your own, the script writes a demo set first: scikit-learn's 8x8 digits
as 28x28 gray PNG files (user.make_demo: true).

    python examples/custom_image_dataset.py examples/custom_images.yaml
    torchrun --standalone --nproc_per_node=2 examples/custom_image_dataset.py examples/custom_images.yaml
    python examples/custom_image_dataset.py examples/custom_images.yaml user.img_dir=my/images \\
        user.annotations_file=my/labels.csv user.make_demo=false
"""

import csv
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, read_image
from torchvision.transforms import v2

import distrain


class CustomImageDataset(Dataset):
    def __init__(self, annotations_file, img_dir, transform=None):
        with open(annotations_file, newline="") as f:
            self.img_labels = [(row[0], int(row[1])) for row in csv.reader(f)]
        self.img_dir = img_dir
        self.transform = transform

    def __len__(self):
        return len(self.img_labels)

    def __getitem__(self, idx):
        name, label = self.img_labels[idx]
        image = read_image(os.path.join(self.img_dir, name), mode=ImageReadMode.GRAY)
        if self.transform:
            image = self.transform(image)
        return image, label


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def make_demo_images(folder: Path, split: str, indices) -> None:
    """Digits as PNG files plus their annotations CSV; written once (rank 0), atomically renamed."""
    import numpy as np
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torchvision.io import write_png

    digits = load_digits()
    images = torch.from_numpy((digits.images * 255 / 16).astype(np.uint8)).unsqueeze(1).float()
    images = F.interpolate(images, size=(28, 28), mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    (folder / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in indices:
        write_png(images[i], str(folder / split / f"{i:04d}.png"))
        rows.append((f"{i:04d}.png", int(digits.target[i])))
    tmp = folder / f".{split}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    tmp.rename(folder / f"{split}.csv")


def main():
    cfg = distrain.load_config(sys.argv[1], sys.argv[2:])
    opts = cfg.user
    folder = Path(opts["demo_dir"])
    if opts.get("make_demo", False):
        if distrain.is_main_process() and not (folder / "test.csv").exists():
            make_demo_images(folder, "train", range(0, 1500))
            make_demo_images(folder, "test", range(1500, 1797))
        while not (folder / "test.csv").exists():  # the other ranks wait for rank 0's files
            import time

            time.sleep(0.1)
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])
    train = CustomImageDataset(folder / "train.csv", folder / "train", transform)
    test = CustomImageDataset(folder / "test.csv", folder / "test", transform)
    torch.manual_seed(cfg.seed)
    model = SmallCNN()
    result = distrain.fit(cfg, model=model, train_data=train, test_data=test, loss=nn.CrossEntropyLoss())
    if distrain.is_main_process():
        print(f"test accuracy {result['test_accuracy']:.4f} on {result['test_samples']} images")


if __name__ == "__main__":
    distrain.run_main(main)
