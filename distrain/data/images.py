"""Image data sets: torchvision's MNIST, FashionMNIST, CIFAR-10 and ImageFolder, and the tutorials'
CSV-annotated image set, with transforms from the config (torchvision transforms v2).

Nothing is downloaded unless data.download is true, and then only by global rank 0 (the others wait at a
barrier and read the files). Missing files are a clear error naming the folder and the files expected.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from distrain.config import DataConfig
from distrain.data.datasets import DataSets
from distrain.errors import ConfigError, UserError

# Known per-channel statistics for normalization; ImageNet's for folders of photos.
STATS = {
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


def build_transform(cfg: DataConfig, *, train: bool, stats: str) -> Callable:
    from torchvision.transforms import v2

    steps: list = [v2.ToImage()]
    if cfg.image_size:
        steps.append(v2.Resize((cfg.image_size, cfg.image_size), antialias=True))
    if cfg.crop:
        steps.append(v2.RandomCrop(cfg.crop) if train else v2.CenterCrop(cfg.crop))
    if cfg.flip and train:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if cfg.normalize:
        mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else STATS[stats]
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def _spec(train: Dataset, test: Dataset, num_classes: int) -> DataSets:
    shape = tuple(train[0][0].shape)
    return DataSets(train, test, num_features=int(np.prod(shape)), num_classes=num_classes, input_shape=shape)


def _missing(cfg: DataConfig, folder: Path, files: list[str]) -> UserError:
    return UserError(f"data.name={cfg.name}: the files are missing in {folder} (expected: {', '.join(files)})",
                     "put them there, point data.root at their parent folder, or set data.download=true")


def _mnist_like(name: str, cls_name: str, folder: str) -> Callable[[DataConfig, int], DataSets]:
    def build(cfg: DataConfig, seed: int) -> DataSets:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, cls_name)
        try:
            train = cls(cfg.root, train=True, download=cfg.download,
                        transform=build_transform(cfg, train=True, stats=name))
            test = cls(cfg.root, train=False, download=cfg.download,
                       transform=build_transform(cfg, train=False, stats=name))
        except RuntimeError as exc:
            if "not found" not in str(exc).lower():
                raise
            raise _missing(cfg, Path(cfg.root) / folder / "raw",
                           ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                            "t10k-labels-idx1-ubyte"]) from None
        return _spec(train, test, 10)

    return build


def _cifar10(cfg: DataConfig, seed: int) -> DataSets:
    import torchvision.datasets

    class CIFAR10(torchvision.datasets.CIFAR10):
        # torchvision checks the batch files' MD5 sums before loading; distrain checks that they exist,
        # so that a user's subset or re-export in the same pickle format loads too (a download is still
        # verified by torchvision against the published sums).
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}  # None: check_integrity tests existence

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    try:
        train = CIFAR10(cfg.root, train=True, download=cfg.download,
                        transform=build_transform(cfg, train=True, stats="cifar10"))
        test = CIFAR10(cfg.root, train=False, download=cfg.download,
                       transform=build_transform(cfg, train=False, stats="cifar10"))
    except RuntimeError as exc:
        if "not found" not in str(exc).lower():
            raise
        raise _missing(cfg, Path(cfg.root) / "cifar-10-batches-py",
                       [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]) from None
    return _spec(train, test, 10)


def _split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    num_test = max(1, int(round(test_fraction * n)))
    return sorted(order[num_test:].tolist()), sorted(order[:num_test].tolist())


def _image_folder(cfg: DataConfig, seed: int) -> DataSets:
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root)
    if not root.is_dir():
        raise ConfigError("data.root", f"{root} is not a folder", "point data.root at a folder of class folders")
    train_tf = build_transform(cfg, train=True, stats="imagenet")
    test_tf = build_transform(cfg, train=False, stats="imagenet")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = ImageFolder(root / "train", transform=train_tf), ImageFolder(test_dir, transform=test_tf)
        if train.classes != test.classes:
            raise UserError(f"{root}/train and {test_dir} have different class folders: "
                            f"{train.classes} vs {test.classes}")
        return _spec(train, test, len(train.classes))
    whole_train, whole_test = ImageFolder(root, transform=train_tf), ImageFolder(root, transform=test_tf)
    train_idx, test_idx = _split(len(whole_train), cfg.test_fraction, seed)
    return _spec(Subset(whole_train, train_idx), Subset(whole_test, test_idx), len(whole_train.classes))


class CsvImages(Dataset):
    """The tutorials' custom Dataset: an annotations CSV of (file name, label) and a folder of images."""

    def __init__(self, rows: list[tuple[str, int]], folder: Path, transform: Callable):
        self.rows, self.folder, self.transform = rows, folder, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        from torchvision.io import ImageReadMode, decode_image

        name, label = self.rows[index]
        image = decode_image(str(self.folder / name), mode=ImageReadMode.RGB)
        return self.transform(image), label


def _csv_images(cfg: DataConfig, seed: int) -> DataSets:
    path, folder = Path(cfg.path), Path(cfg.root)
    if not path.is_file():
        raise ConfigError("data.path", f"{path} does not exist", "point data.path at the annotations CSV")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    rows = rows[1:] if cfg.header else rows
    classes = sorted({label for _, label in rows}, key=lambda v: (int(v) if v.lstrip("-").isdigit() else 0, v))
    items = [(name, classes.index(label)) for name, label in rows]
    missing = [name for name, _ in items if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) named in {path} are missing in {folder}, e.g. {missing[0]}",
                        "data.root must be the folder the file names in the CSV are relative to")
    train_idx, test_idx = _split(len(items), cfg.test_fraction, seed)
    train = CsvImages([items[i] for i in train_idx], folder, build_transform(cfg, train=True, stats="imagenet"))
    test = CsvImages([items[i] for i in test_idx], folder, build_transform(cfg, train=False, stats="imagenet"))
    return _spec(train, test, len(classes))


BUILDERS: dict[str, Callable[[DataConfig, int], DataSets]] = {
    "mnist": _mnist_like("mnist", "MNIST", "MNIST"),
    "fashion_mnist": _mnist_like("fashion_mnist", "FashionMNIST", "FashionMNIST"),
    "cifar10": _cifar10,
    "image_folder": _image_folder,
    "csv_images": _csv_images,
}
