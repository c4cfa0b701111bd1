"""WebDataset-style tar shards: a folder of `.tar` files, each sample the files sharing a key (the path up
to the first dot of the file name: `000123.png` + `000123.cls`), for image sets too large to list.

    data: {name: webdataset, args: {train: data/shards/train, test: data/shards/test, num_classes: 10}}
    distrain shards configs/fashion_mnist.yaml data/fashion_tars --format webdataset    # writes such tars

Each tar file is one shard (sorted by name). `shard_size` counts a shard's samples from the tar headers
alone (no image is read); `open_shard(shard, start)` passes over the first `start` samples' members
without reading or decoding them. Images are decoded through PIL (distrain.data.image_files: PNG, JPEG,
...: uint8 [C, H, W]) and go through the data set's transform (data.args.transform, torchvision transforms
v2, per sample); labels are read from `.cls` or `.txt` files as integers. A sample's files must be
adjacent in the tar (the WebDataset convention: written one sample after another).
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch.utils.data import Dataset, TensorDataset

from distrain.atomic import atomic_write_dir, fsync_path
from distrain.data.datasets import DataSets
from distrain.data.images import ImageTransform, build_transform
from distrain.data.shards import ShardedDataset
from distrain.errors import ConfigError, UserError

Mode = Literal["unchanged", "rgb", "gray"]


def sample_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member: `a/000123.seg.png` -> (`a/000123`, `seg.png`)."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension


def _members(tar: tarfile.TarFile) -> Iterator[list[tarfile.TarInfo]]:
    """The members of each sample, in order: runs of regular files sharing a key (headers only)."""
    group: list[tarfile.TarInfo] = []
    for member in tar:
        if not member.isfile():
            continue
        if group and sample_key(member.name)[0] != sample_key(group[0].name)[0]:
            yield group
            group = []
        group.append(member)
    if group:
        yield group


class TarShards(ShardedDataset):
    """The samples of a list of WebDataset-style `.tar` files, one shard per file: (image, label) tuples,
    the image decoded and transformed, the label an int64 scalar tensor."""

    def __init__(
        self,
        files: list[str],
        *,
        image_key: str = "png",
        label_key: str = "cls",
        mode: Mode = "unchanged",
        transform: Callable[[torch.Tensor], Any] | None = None,
    ):
        self.files = sorted(str(f) for f in files)
        self.image_key, self.label_key, self.mode, self.transform = image_key, label_key, mode, transform

    def shards(self) -> list[str]:
        return list(self.files)

    def shard_size(self, shard: str) -> int:
        with _open(shard) as tar:
            return sum(1 for _ in _members(tar))

    def open_shard(self, shard: str, start: int = 0) -> Iterator[tuple[Any, torch.Tensor]]:
        with _open(shard) as tar:
            for number, group in enumerate(_members(tar)):
                if number < start:
                    continue  # its headers were read; its data is seeked over, never read
                yield self._sample(tar, shard, group)

    def _sample(self, tar: tarfile.TarFile, shard: str, group: list[tarfile.TarInfo]) -> tuple[Any, torch.Tensor]:
        by_extension = {sample_key(m.name)[1]: m for m in group}
        key = sample_key(group[0].name)[0]
        missing = [e for e in (self.image_key, self.label_key) if e not in by_extension]
        if missing:
            raise UserError(
                f"sample {key!r} of {shard} has no .{missing[0]} file (it has: {', '.join(sorted(by_extension))})",
                "set data.args.image_key and data.args.label_key to the extensions the tar files use",
            )
        image_bytes = tar.extractfile(by_extension[self.image_key]).read()  # type: ignore[union-attr]
        label_text = tar.extractfile(by_extension[self.label_key]).read()  # type: ignore[union-attr]
        try:
            label = int(label_text.decode().strip())
        except ValueError:
            raise UserError(
                f"the label of sample {key!r} in {shard} is {label_text[:40]!r}, not an integer",
                f"the .{self.label_key} files hold class indices 0..K-1 as text",
            ) from None
        image = decode(image_bytes, self.mode, f"{shard}:{by_extension[self.image_key].name}")
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(label, dtype=torch.int64)


def _open(shard: str) -> tarfile.TarFile:
    try:
        return tarfile.open(shard, mode="r:")  # uncompressed: members' data is seeked over, not read
    except (OSError, tarfile.TarError) as exc:
        raise UserError(f"cannot read tar shard {shard}: {exc}", "an uncompressed .tar file is expected") from None


def decode(data: bytes, mode: Mode, where: str) -> torch.Tensor:
    from distrain.data.image_files import decode as decode_file

    try:
        return decode_file(data, mode)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types (UnidentifiedImageError, SyntaxError, OSError)
        raise UserError(f"{where} is not a readable image ({exc})", "replace or remove the sample") from None


def tar_files(pattern: str, key: str) -> list[str]:
    """The .tar files of a folder, or those a glob names, sorted; none is a ConfigError naming `key`."""
    path = Path(pattern)
    files = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else sorted(glob.glob(pattern))
    if not files:
        raise ConfigError(key, f"{pattern} names no .tar file", "give a folder of .tar files or a glob (dir/*.tar)")
    return files


def webdataset(
    *,
    train: str,
    test: str | None = None,
    image_key: str = "png",
    label_key: str = "cls",
    mode: Mode = "unchanged",
    num_classes: int | None = None,
    transform: ImageTransform = ImageTransform(normalize=False),
) -> DataSets:
    """WebDataset-style tar shards: `train` (and `test`) a folder of .tar files or a glob of them; each
    sample's image under the extension `image_key` (decoded as stored, or as `mode` rgb/gray) and its
    integer label under `label_key` (cls or txt). Images scaled to [0, 1] (`transform`: torchvision v2,
    per sample; `normalize` with `mean` and `std`, gray's statistics by default)."""
    stats = "imagenet" if mode == "rgb" else "gray"
    sets = [
        TarShards(
            tar_files(pattern, f"data.args.{name}"),
            image_key=image_key,
            label_key=label_key,
            mode=mode,
            transform=build_transform(transform, train=name == "train", stats=stats),
        )
        if pattern is not None
        else None
        for name, pattern in (("train", train), ("test", test))
    ]
    return DataSets(sets[0], sets[1], num_classes=num_classes)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ writing


def write_tar_shards(dataset: Dataset, out_dir: str | os.PathLike, samples_per_shard: int = 8192) -> Path:
    """A map-style data set of (uint8 image [C, H, W], integer label) samples as WebDataset-style tars in
    `out_dir` (`shard-00000.tar`, ...: `<index>.png` + `<index>.cls` per sample), atomically as
    distrain's own shards are (a temporary folder renamed into place; never over other files). An
    in-memory image set is written from its stored uint8 images (not its transformed samples)."""
    return atomic_write_dir(Path(out_dir), lambda tmp: _write_tars(dataset, tmp, samples_per_shard))


def write_tar_splits(data: DataSets, out_dir: str | os.PathLike, samples_per_shard: int = 8192) -> Path:
    """Each split of `data` as `out_dir`/<split>/*.tar, all at once atomically (`distrain shards --format
    webdataset`)."""

    def fill(tmp: Path) -> None:
        for split in ("train", "test", "val"):
            dataset = getattr(data, split)
            if dataset is not None:
                (tmp / split).mkdir()
                _write_tars(dataset, tmp / split, samples_per_shard)

    return atomic_write_dir(Path(out_dir), fill)


def _write_tars(dataset: Dataset, folder: Path, samples_per_shard: int) -> None:
    from distrain.data.image_files import encode_png

    if samples_per_shard <= 0:
        raise ConfigError("--samples-per-shard", f"must be > 0, got {samples_per_shard}")
    total = len(dataset)  # type: ignore[arg-type]
    stored = isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2
    for number, start in enumerate(range(0, total, samples_per_shard)):
        path = folder / f"shard-{number:05d}.tar"
        with tarfile.open(path, mode="w") as tar:
            for index in range(start, min(start + samples_per_shard, total)):
                image, label = (t[index] for t in dataset.tensors) if stored else dataset[index]  # type: ignore[attr-defined]
                if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
                    raise UserError(
                        f"sample {index} is not (uint8 image [C, H, W], label): its image is "
                        f"{getattr(image, 'dtype', type(image).__name__)} {list(getattr(image, 'shape', []))}",
                        "tar shards hold images as PNG: write a data set of uint8 images (or use --format files)",
                    )
                _add(tar, f"{index:08d}.png", encode_png(image))
                _add(tar, f"{index:08d}.cls", str(int(label)).encode())
        fsync_path(path)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
