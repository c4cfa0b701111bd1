"""Image data sets: torchvision's MNIST, FashionMNIST, CIFAR-10 and ImageFolder, and the tutorials'
CSV-annotated image set, with transforms from the config (torchvision transforms v2).

Each data set is a function whose keyword arguments are its options (`data.args`), the transforms one
`ImageTransform` under `data.args.transform`:

    data: {name: mnist, args: {root: data, download: false, transform: {normalize: true}}, ...}
    data: {name: image_folder, args: {root: data/flowers, transform: {image_size: 64, flip: true}}, ...}

Nothing is downloaded unless data.args.download is true, and then only by global rank 0 (the others wait
at a barrier and read the files). Missing files are a clear error naming the folder and the files expected.
"""

from __future__ import annotations

import csv as csv_module
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from distrain.data.datasets import DataSets
from distrain.errors import ConfigError, UserError

# Known per-channel statistics for normalization; ImageNet's for folders of photos.
STATS = {
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "gray": ([0.5], [0.5]),  # gray photos without known statistics: scaled to [-1, 1]
}


@dataclass(kw_only=True)
class ImageTransform:
    """The image transforms of a data set (torchvision transforms v2), `data.args.transform`."""

    image_size: int | None = None
    """Resize images to this size (square)."""
    crop: int | None = None
    """Crop images to this size: random crops for training, center crops for testing."""
    flip: bool = False
    """Random horizontal flips for training."""
    normalize: bool = True
    """Normalize with `mean` and `std` (the data set's known statistics when those are null)."""
    mean: list[float] | None = None
    """Per-channel mean for normalization."""
    std: list[float] | None = None
    """Per-channel std for normalization."""

    def __post_init__(self) -> None:
        for key in ("image_size", "crop"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"data.args.transform.{key}", f"must be > 0 or null, got {value}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data.args.transform.mean", "set mean and std together")


def build_transform(options: ImageTransform, *, train: bool, stats: str) -> Callable:
    from torchvision.transforms import v2

    steps: list = [v2.ToImage()]
    if options.image_size:
        steps.append(v2.Resize((options.image_size, options.image_size), antialias=True))
    if options.crop:
        steps.append(v2.RandomCrop(options.crop) if train else v2.CenterCrop(options.crop))
    if options.flip and train:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if options.normalize:
        mean, std = (options.mean, options.std) if options.mean is not None else STATS[stats]
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def _spec(train: Dataset, test: Dataset, num_classes: int) -> DataSets:
    return DataSets(train, test, num_classes=num_classes)


def _missing(name: str, folder: Path, files: list[str]) -> UserError:
    return UserError(f"data.name={name}: the files are missing in {folder} (expected: {', '.join(files)})",
                     "put them there, point data.args.root at their parent folder, or set data.args.download=true")


def _mnist_like(name: str, cls_name: str, root: str, download: bool, transform: ImageTransform) -> DataSets:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(root, train=True, download=download, transform=build_transform(transform, train=True, stats=name))
        test = cls(root, train=False, download=download, transform=build_transform(transform, train=False, stats=name))
    except RuntimeError as exc:
        if "not found" not in str(exc).lower():
            raise
        raise _missing(name, Path(root) / cls_name / "raw",
                       ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"]) from None
    return _spec(train, test, 10)


def mnist(*, root: str = "data", download: bool = False,
          transform: ImageTransform = ImageTransform()) -> DataSets:
    """torchvision's MNIST from `root`/MNIST/raw (downloaded there by global rank 0 when `download`)."""
    return _mnist_like("mnist", "MNIST", root, download, transform)


def fashion_mnist(*, root: str = "data", download: bool = False,
                  transform: ImageTransform = ImageTransform()) -> DataSets:
    """torchvision's FashionMNIST from `root`/FashionMNIST/raw."""
    return _mnist_like("fashion_mnist", "FashionMNIST", root, download, transform)


def cifar10(*, root: str = "data", download: bool = False,
            transform: ImageTransform = ImageTransform()) -> DataSets:
    """torchvision's CIFAR-10 from `root`/cifar-10-batches-py."""
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
        train = CIFAR10(root, train=True, download=download,
                        transform=build_transform(transform, train=True, stats="cifar10"))
        test = CIFAR10(root, train=False, download=download,
                       transform=build_transform(transform, train=False, stats="cifar10"))
    except RuntimeError as exc:
        if "not found" not in str(exc).lower():
            raise
        raise _missing("cifar10", Path(root) / "cifar-10-batches-py",
                       [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]) from None
    return _spec(train, test, 10)


def _split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    num_test = max(1, int(round(test_fraction * n)))
    return sorted(order[num_test:].tolist()), sorted(order[:num_test].tolist())


def image_folder(*, root: str, test_fraction: float = 0.2, transform: ImageTransform = ImageTransform(),
                 seed: int = 0) -> DataSets:
    """A folder of class folders: with train/ and test/ (or val/) sub-folders, or one folder split by
    seed (`test_fraction`). Normalized with ImageNet's statistics unless transform.mean/std are set."""
    from torchvision.datasets import ImageFolder

    folder = Path(root)
    if not folder.is_dir():
        raise ConfigError("data.args.root", f"{folder} is not a folder",
                          "point data.args.root at a folder of class folders")
    root = folder
    train_tf = build_transform(transform, train=True, stats="imagenet")
    test_tf = build_transform(transform, train=False, stats="imagenet")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = ImageFolder(root / "train", transform=train_tf), ImageFolder(test_dir, transform=test_tf)
        if train.classes != test.classes:
            raise UserError(f"{root}/train and {test_dir} have different class folders: "
                            f"{train.classes} vs {test.classes}")
        return _spec(train, test, len(train.classes))
    whole_train, whole_test = ImageFolder(root, transform=train_tf), ImageFolder(root, transform=test_tf)
    train_idx, test_idx = _split(len(whole_train), test_fraction, seed)
    return _spec(Subset(whole_train, train_idx), Subset(whole_test, test_idx), len(whole_train.classes))


class CsvImages(Dataset):
    """The tutorials' custom Dataset: an annotations CSV of (file name, label) and a folder of images."""

    def __init__(self, rows: list[tuple[str, int]], folder: Path, transform: Callable, mode: str = "rgb"):
        self.rows, self.folder, self.transform, self.mode = rows, folder, transform, mode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        from torchvision.io import ImageReadMode, decode_image

        name, label = self.rows[index]
        mode = ImageReadMode.RGB if self.mode == "rgb" else ImageReadMode.GRAY
        image = decode_image(str(self.folder / name), mode=mode)
        return self.transform(image), label


def csv_images(*, path: str, root: str, header: bool = True, mode: Literal["rgb", "gray"] = "rgb",
               test_fraction: float = 0.2, transform: ImageTransform = ImageTransform(), seed: int = 0) -> DataSets:
    """The tutorials' custom Dataset: an annotations CSV `path` of (file name, label) rows and the image
    folder `root` the names are relative to, decoded as RGB or gray (`mode`: 1 channel), split by seed."""
    path, folder = Path(path), Path(root)
    if not path.is_file():
        raise ConfigError("data.args.path", f"{path} does not exist", "point data.args.path at the annotations CSV")
    with open(path, newline="") as f:
        rows = [r for r in csv_module.reader(f) if r]
    rows = rows[1:] if header else rows
    classes = sorted({label for _, label in rows}, key=lambda v: (int(v) if v.lstrip("-").isdigit() else 0, v))
    items = [(name, classes.index(label)) for name, label in rows]
    missing = [name for name, _ in items if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) named in {path} are missing in {folder}, e.g. {missing[0]}",
                        "data.args.root must be the folder the file names in the CSV are relative to")
    stats = "imagenet" if mode == "rgb" else "gray"
    train_idx, test_idx = _split(len(items), test_fraction, seed)
    train = CsvImages([items[i] for i in train_idx], folder, build_transform(transform, train=True, stats=stats), mode)
    test = CsvImages([items[i] for i in test_idx], folder, build_transform(transform, train=False, stats=stats), mode)
    return _spec(train, test, len(classes))


