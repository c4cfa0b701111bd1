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
    return UserError(
        f"data.name={name}: the files are missing in {folder} (expected: {', '.join(files)})",
        "put them there, point data.args.root at their parent folder, or set data.args.download=true",
    )


def _download_failed(name: str, folder: Path, exc: BaseException) -> UserError:
    reason = getattr(exc, "reason", None) or " ".join(str(exc).split())[:300]
    return UserError(
        f"data.args.download: downloading data.name={name} into {folder} failed: {reason}",
        "check the network (or a proxy); on a machine without one, copy the files into that folder "
        "and set data.args.download=false",
    )


def batch_transform(options: ImageTransform, *, train: bool, stats: str, seed: int):
    """build_transform's ops for whole uint8 batches (data/in_memory.py), or None where the per-sample
    path must stay (resizing)."""
    from distrain.data.in_memory import BatchTransform

    if options.image_size:
        return None
    mean, std = (options.mean, options.std) if options.mean is not None else STATS[stats]
    return BatchTransform(
        crop=options.crop,
        random_crop=bool(options.crop) and train,
        flip=options.flip and train,
        mean=tuple(mean) if options.normalize else None,
        std=tuple(std) if options.normalize else None,
        seed=seed,
    )


def _in_memory(
    name: str,
    train: Dataset,
    test: Dataset,
    images: Callable,
    options: ImageTransform,
    seed: int,
    fast: bool,
    num_train: int | None,
    num_test: int | None,
) -> DataSets:
    """torchvision's set as is (fast: false or a resize), or its arrays as ImageTensors; the first
    num_train / num_test samples when those are set."""
    import logging

    from distrain.data.in_memory import ImageTensors

    for key, value, full in (("num_train", num_train, train), ("num_test", num_test, test)):
        if value is not None and not 0 < value <= len(full):
            raise ConfigError(f"data.args.{key}", f"must be in 1..{len(full)} or null, got {value}")
    train_tf = batch_transform(options, train=True, stats=name, seed=seed) if fast else None
    if train_tf is None:
        logging.getLogger("distrain").info(
            "data: %s through torchvision's per-sample transforms (%s)",
            name,
            "data.args.fast is false" if not fast else "resizing is per sample",
        )
        return _spec(
            Subset(train, range(num_train)) if num_train else train,
            Subset(test, range(num_test)) if num_test else test,
            10,
        )
    test_tf = batch_transform(options, train=False, stats=name, seed=seed)
    (x, y), (tx, ty) = images(train), images(test)
    return _spec(
        ImageTensors(x[:num_train], y[:num_train], train_tf), ImageTensors(tx[:num_test], ty[:num_test], test_tf), 10
    )


def _idx_images(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.data.unsqueeze(1).contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _mnist_like(
    name: str,
    cls_name: str,
    root: str,
    download: bool,
    transform: ImageTransform,
    seed: int,
    fast: bool,
    num_train: int | None,
    num_test: int | None,
) -> DataSets:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(root, train=True, download=download, transform=build_transform(transform, train=True, stats=name))
        test = cls(root, train=False, download=download, transform=build_transform(transform, train=False, stats=name))
    except (RuntimeError, OSError) as exc:
        if download and "not found" not in str(exc).lower():
            raise _download_failed(name, Path(root) / cls_name / "raw", exc) from None
        if "not found" not in str(exc).lower():
            raise
        raise _missing(
            name,
            Path(root) / cls_name / "raw",
            ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
        ) from None
    return _in_memory(name, train, test, _idx_images, transform, seed, fast, num_train, num_test)


def mnist(
    *,
    root: str = "data",
    download: bool = False,
    transform: ImageTransform = ImageTransform(),
    fast: bool = True,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> DataSets:
    """torchvision's MNIST from `root`/MNIST/raw (downloaded there by global rank 0 when `download`).
    `fast`: its images held as one uint8 tensor and transformed a batch at a time on the device (bitwise
    the per-sample values; data/in_memory.py); false: torchvision's per-sample PIL path. `num_train`,
    `num_test`: only the first N samples (quick tries)."""
    return _mnist_like("mnist", "MNIST", root, download, transform, seed, fast, num_train, num_test)


def fashion_mnist(
    *,
    root: str = "data",
    download: bool = False,
    transform: ImageTransform = ImageTransform(),
    fast: bool = True,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> DataSets:
    """torchvision's FashionMNIST from `root`/FashionMNIST/raw (the other options as for mnist)."""
    return _mnist_like("fashion_mnist", "FashionMNIST", root, download, transform, seed, fast, num_train, num_test)


def _cifar_images(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW, as ToImage does
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


def cifar10(
    *,
    root: str = "data",
    download: bool = False,
    transform: ImageTransform = ImageTransform(),
    fast: bool = True,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> DataSets:
    """torchvision's CIFAR-10 from `root`/cifar-10-batches-py (`fast` as for mnist; random crops and flips
    then come from the run's seed per epoch and sample)."""
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
        train = CIFAR10(
            root, train=True, download=download, transform=build_transform(transform, train=True, stats="cifar10")
        )
        test = CIFAR10(
            root, train=False, download=download, transform=build_transform(transform, train=False, stats="cifar10")
        )
    except (RuntimeError, OSError) as exc:
        if download and "not found" not in str(exc).lower():
            raise _download_failed("cifar10", Path(root) / "cifar-10-batches-py", exc) from None
        if "not found" not in str(exc).lower():
            raise
        raise _missing(
            "cifar10",
            Path(root) / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"],
        ) from None
    return _in_memory("cifar10", train, test, _cifar_images, transform, seed, fast, num_train, num_test)


def _split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    num_test = max(1, int(round(test_fraction * n)))
    return sorted(order[num_test:].tolist()), sorted(order[:num_test].tolist())


def image_folder(
    *, root: str, test_fraction: float = 0.2, transform: ImageTransform = ImageTransform(), seed: int = 0
) -> DataSets:
    """A folder of class folders: with train/ and test/ (or val/) sub-folders, or one folder split by
    seed (`test_fraction`). Normalized with ImageNet's statistics unless transform.mean/std are set."""
    folder = Path(root)
    if not folder.is_dir():
        raise ConfigError(
            "data.args.root", f"{folder} is not a folder", "point data.args.root at a folder of class folders"
        )
    root = folder
    train_tf = build_transform(transform, train=True, stats="imagenet")
    test_tf = build_transform(transform, train=False, stats="imagenet")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = _image_folder(root / "train", train_tf), _image_folder(test_dir, test_tf)
        if train.classes != test.classes:
            raise UserError(
                f"{root}/train and {test_dir} have different class folders: {train.classes} vs {test.classes}"
            )
        return _spec(train, test, len(train.classes))
    whole_train, whole_test = _image_folder(root, train_tf), _image_folder(root, test_tf, check=False)
    train_idx, test_idx = _split(len(whole_train), test_fraction, seed)
    return _spec(Subset(whole_train, train_idx), Subset(whole_test, test_idx), len(whole_train.classes))


def _image_folder(folder: Path, transform: Callable, check: bool = True):
    """torchvision's ImageFolder, with its problems named: an empty class folder, an unreadable image."""
    from torchvision.datasets import ImageFolder

    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise UserError(f"{folder} has no class folders", "put each class's images in a sub-folder named after it")
    dataset = ImageFolder(folder, transform=transform, allow_empty=True)
    counts = {name: 0 for name in dataset.classes}
    for _, label in dataset.samples:
        counts[dataset.classes[label]] += 1
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise UserError(
            f"class folder {folder / empty[0]} holds no image ({len(empty)} empty: {', '.join(empty)})",
            "add images (.jpg, .png, ...) or remove the folder: every class needs examples",
        )
    if check:
        check_images([Path(p) for p, _ in dataset.samples])
    return dataset


class CsvImages(Dataset):
    """The tutorials' custom Dataset: an annotations CSV of (file name, label) and a folder of images."""

    def __init__(self, rows: list[tuple[str, int]], folder: Path, transform: Callable, mode: str = "rgb"):
        self.rows, self.folder, self.transform, self.mode = rows, folder, transform, mode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        from distrain.data.image_files import decode

        name, label = self.rows[index]
        return self.transform(decode(self.folder / name, "rgb" if self.mode == "rgb" else "gray")), label


def csv_images(
    *,
    path: str,
    root: str,
    header: bool = True,
    mode: Literal["rgb", "gray"] = "rgb",
    classes: list[str] | None = None,
    test_fraction: float = 0.2,
    transform: ImageTransform = ImageTransform(),
    seed: int = 0,
) -> DataSets:
    """The tutorials' custom Dataset: an annotations CSV `path` of (file name, label) rows and the image
    folder `root` the names are relative to, decoded as RGB or gray (`mode`: 1 channel), split by seed.
    Labels become 0..K-1 in the order of `classes` when given (others are an error), else sorted.
    Checked first: a bad row, a missing or unreadable image exits 2 naming the file (and line)."""
    from distrain.data.tables import class_indices, read_table

    path, folder = Path(path), Path(root)
    table = read_table(path, header=header)
    if len(table.rows[0]) != 2:
        raise UserError(f"{path} has {len(table.rows[0])} columns", "an annotations CSV has two: file name, label")
    labels, classes = class_indices(table, 1, classes)
    items = [(row[0], int(label)) for row, label in zip(table.rows, labels)]
    missing = [name for name, _ in items if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} image(s) named in {path} are missing in {folder}, e.g. {missing[0]}",
            "data.args.root must be the folder the file names in the CSV are relative to",
        )
    check_images([folder / name for name, _ in items])
    stats = "imagenet" if mode == "rgb" else "gray"
    train_idx, test_idx = _split(len(items), test_fraction, seed)
    train = CsvImages([items[i] for i in train_idx], folder, build_transform(transform, train=True, stats=stats), mode)
    test = CsvImages([items[i] for i in test_idx], folder, build_transform(transform, train=False, stats=stats), mode)
    return _spec(train, test, len(classes))


def check_images(paths: list[Path]) -> None:
    """Each file is an image PIL can open and whose structure is whole (`verify`: headers and, for PNG,
    the chunk checksums; no full decode, so it costs a small part of one epoch's loading). A file that
    fails is named, before training starts rather than in a DataLoader worker mid-epoch."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as exc:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError, ...)
            raise UserError(
                f"{path} is not a readable image ({type(exc).__name__}: {exc})", "replace or remove the file"
            ) from None
