"""Image sets held in memory, transformed a whole batch at a time on the training device.

torchvision's MNIST, FashionMNIST and CIFAR-10 keep every image in one uint8 array, yet their samples go
through PIL one at a time: `Image.fromarray`, ToImage, ToDtype, Normalize, then collate, about 0.5 ms per
MNIST sample here, as long as half the CNN's compute and nearly all of a GPU step. `ImageTensors` keeps
the uint8 images as one tensor [N, C, H, W] (a TensorDataset, so the batch sources take their tensor
path: one gather per epoch, each step a view) and applies the same torchvision v2 ops to whole batches
on the device:

- deterministic ops (ToDtype with scaling, Normalize, a center crop) give bitwise the per-sample path's
  values (elementwise ops; tested by training both paths to equal weights);
- random ops (`crop` for training, `flip`) are drawn per sample from a generator seeded by (seed, epoch),
  indexed by the sample's place in the data set: reproducible, resumable mid-epoch and the same on any
  number of processes, but not the draws of torchvision's per-sample transforms (which come from each
  worker's RNG);
- resizing is not done here: `image_size` keeps the per-sample path (PIL's resampling and a tensor
  resize differ by rounding), as does `fast: false`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset


@dataclass(frozen=True)
class BatchTransform:
    """build_transform's ops for uint8 batches [B, C, H, W]: `augment` (random, training) then `__call__`."""

    crop: int | None = None  # center crop (evaluation) when not random_crop
    random_crop: bool = False
    flip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0

    @property
    def is_random(self) -> bool:
        return self.random_crop or self.flip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        # The very ops (and objects) of the per-sample path, applied to a batch: the same elementwise math.
        if self.crop and not self.random_crop:
            images = v2.functional.center_crop(images, [self.crop, self.crop])
        images = v2.functional.to_dtype(images, torch.float32, scale=True)
        if self.mean is not None:
            images = v2.functional.normalize(images, list(self.mean), list(self.std))
        return images

    def draws(self, epoch: int, dataset_size: int) -> dict[str, torch.Tensor]:
        """Every sample's random draws for `epoch` (crop offsets, flips), from (seed, epoch) alone: the same
        for any number of ranks and after any resume. Indexed by the samples' places in the data set."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        out = {}
        if self.random_crop:
            out["top"] = torch.randint(0, 1 << 30, (dataset_size,), generator=generator)
            out["left"] = torch.randint(0, 1 << 30, (dataset_size,), generator=generator)
        if self.flip:
            out["flip"] = torch.rand(dataset_size, generator=generator) < 0.5
        return out

    def augment(self, images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Random crops and flips of a batch, given its samples' `draws` (rows of `draws(...)`)."""
        # Everything on the images' device (the draws are put there once per epoch): no copy in the step.
        device = images.device
        if self.random_crop:
            height, width = images.shape[-2:]
            steps = torch.arange(self.crop, device=device)
            rows = (draws["top"] % (height - self.crop + 1))[:, None] + steps  # [B, crop]
            cols = (draws["left"] % (width - self.crop + 1))[:, None] + steps
            batch = torch.arange(len(images), device=device)[:, None, None, None]
            channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
            images = images[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
        if self.flip:
            images = torch.where(draws["flip"][:, None, None, None], images.flip(-1), images)
        return images


class ImageTensors(TensorDataset):
    """uint8 images [N, C, H, W] and their targets, with the transform applied per batch by the batch
    sources (distrain.data.batches). Indexing one sample gives the transformed sample without the random
    augmentation (for inspection and the pre-flight probe)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: BatchTransform):
        super().__init__(images, targets)
        self.batch_transform = transform

    def __getitem__(self, index):
        image, target = super().__getitem__(index)
        return self.batch_transform(image[None])[0], target

    def subset(self, index: torch.Tensor, *, evaluation: bool) -> ImageTensors:
        """The samples `index` (a validation hold-out: `evaluation` drops the random augmentation)."""
        from dataclasses import replace

        transform = self.batch_transform
        if evaluation and transform.is_random:
            transform = replace(transform, random_crop=False, flip=False)
        return ImageTensors(self.tensors[0][index], self.tensors[1][index], transform)
