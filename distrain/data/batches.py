"""Batch sources: the batches of this rank, for training and for evaluation.

Two paths give identical batches (same indices, same values, tested bit for bit):
- tensor: the data set is tensors in memory (a TensorDataset: the last tensor is the target, the others
  the model's inputs); once per epoch the whole tensors are indexed
  with this rank's shuffled indices (on the training device), and each batch is a view of the next rows.
  No per-sample __getitem__, no collate, no workers. In-memory image sets (data/in_memory.py) are
  uint8 tensors there, transformed one whole batch at a time on the device.
- dataloader: a DataLoader whose batch sampler yields the same indices, for data sets that load lazily
  (files, transforms), with workers, pinned memory and non-blocking copies on CUDA. Samples may be
  (x, y) tuples, (x1, x2, y), dicts or any nesting of them (distrain.data.structures).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from distrain.data.sampling import GlobalBatchSampler, eval_batch_ranges
from distrain.data.seeded import Keyed, SeededSamples
from distrain.data.structures import MultipleInputs, split_sample, to_device, tree_map
from distrain.errors import ConfigError
from distrain.seeding import loader_generator, seed_worker


@dataclass(slots=True)
class Batch:
    step: int  # training: step within the epoch; evaluation: the global eval-batch index
    inputs: Any  # a tensor, or several (MultipleInputs), or a dict of keyword inputs
    targets: Any  # as the loss takes them (see `prepare_targets` below)
    global_size: int  # samples in this step over all ranks (training); this rank's samples of the batch
    # (evaluation: the whole batch, or this rank's positions of it with data.streams)
    # Sharded streams: (lane, rows) of the share, in lane order (a lane is read by one rank on any world
    # size, so a strategy that needs world-size-free units of the batch can take each lane as one).
    lanes: list[tuple[int, int]] | None = None


PrepareTargets = Callable[[Any], Any]


def _same(targets: Any) -> Any:
    return targets


def _on_device(
    dataset: TensorDataset, device: torch.device, prepare_targets: PrepareTargets
) -> tuple[list[torch.Tensor], torch.Tensor]:
    # Targets are prepared for the loss once here (Objective.prepare_targets), not at every step.
    *inputs, targets = dataset.tensors
    return [t.to(device) for t in inputs], prepare_targets(targets.to(device))


def _inputs(tensors: list[torch.Tensor]) -> Any:
    return tensors[0] if len(tensors) == 1 else MultipleInputs(tensors)


def use_tensor_path(dataset: Dataset, mode: str) -> bool:
    is_tensors = isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2
    if mode == "tensor" and not is_tensors:
        raise ConfigError(
            "data.loader",
            "is 'tensor' but this data set is not held as tensors in memory",
            "use data.loader=auto or data.loader=dataloader",
        )
    return is_tensors and mode != "dataloader"


class _CollateOrEmpty:
    """default_collate, except that an empty share (the last global batch may leave a rank nothing)
    becomes zero-length tensors shaped like a sample."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __call__(self, samples: list[Any]) -> Any:
        if samples:
            return default_collate(samples)
        return tree_map(lambda t: t[:0], default_collate([self.dataset[0]]))


class _RankBatchSampler:
    def __init__(self, sampler: GlobalBatchSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        for _, indices in self.sampler.rank_batches():
            yield indices

    def __len__(self) -> int:
        return self.sampler.num_steps - self.sampler.start_step


@dataclass(frozen=True)
class LoaderOptions:
    num_workers: int = 0
    persistent_workers: bool | None = None  # null: yes when there are workers
    prefetch_factor: int | None = None
    seed_samples: bool = False  # data.seed_samples: each sample read under its own seed (data/seeded.py)


@dataclass(frozen=True)
class BatchSetup:
    """How every batch source of a run places its batches: this rank's place, the device, the loader's
    options and how targets are prepared. Built once per run (loop/components.py), handed to each source."""

    rank: int
    world_size: int
    device: torch.device
    seed: int
    loader: str = "auto"  # data.loader: auto | tensor | dataloader
    options: LoaderOptions = LoaderOptions()
    prepare_targets: PrepareTargets = _same
    channels_last: bool = False
    target_key: str | None = None
    streams: bool = False  # data.streams: each rank evaluates the same positions of every batch

    def placed(self) -> dict[str, Any]:
        """The keyword arguments every source class takes alike."""
        return dict(
            seed=self.seed,
            prepare_targets=self.prepare_targets,
            channels_last=self.channels_last,
            target_key=self.target_key,
        )


def _loader(
    dataset: Dataset,
    batch_sampler: Any,
    device: torch.device,
    options: LoaderOptions,
    seed: int,
    rank: int,
    epoch: Callable[[], int] | None = None,
) -> DataLoader:
    """A DataLoader over this rank's batches. With data.seed_samples (`options.seed_samples`) each sample
    is read under its own seed from (seed, `epoch()`, index): data/seeded.py."""
    collate = _CollateOrEmpty(dataset)
    if options.seed_samples:
        dataset, batch_sampler = SeededSamples(dataset, seed), Keyed(batch_sampler, epoch or (lambda: -1))
    # Pinned host memory lets the copies to the GPU run asynchronously (non_blocking=True below).
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=options.num_workers,
        # Workers forked once, not every epoch: see data.persistent_workers (cpython#112275).
        persistent_workers=options.num_workers > 0 and options.persistent_workers is not False,
        prefetch_factor=options.prefetch_factor,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker if options.num_workers else None,
        generator=loader_generator(seed, rank),
    )


def _placed(inputs: Any, device: torch.device, channels_last: bool) -> Any:
    """On the training device (asynchronously from pinned memory on CUDA); image batches in channels_last
    when the model is (a convolution on mismatched layouts would convert on every call)."""
    inputs = to_device(inputs, device)
    if channels_last:
        inputs = tree_map(lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t, inputs)
    return inputs


class TrainBatches:
    """This rank's training batches for one epoch: `set_epoch(e)`, optionally `set_start_step(k)`, iterate."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: GlobalBatchSampler,
        device: torch.device,
        *,
        tensor_path: bool,
        options: LoaderOptions,
        seed: int,
        prepare_targets: PrepareTargets = _same,
        channels_last: bool = False,
        target_key: str | None = None,
    ):
        self.sampler = sampler
        self.target_key = target_key
        self.device = device
        self.channels_last = channels_last
        self.prepare_targets = prepare_targets
        # In-memory images (data/in_memory.py): uint8 on the device, transformed per batch.
        self._transform = getattr(dataset, "batch_transform", None) if tensor_path else None
        if tensor_path:
            self._tensors = _on_device(dataset, device, prepare_targets)
        else:
            self._tensors = None
            self._loader = _loader(
                dataset, _RankBatchSampler(sampler), device, options, seed, sampler.rank, lambda: sampler.epoch
            )

    steps_limit: int | None = None  # trainer.steps_per_epoch: an epoch ends after this many steps

    @property
    def num_steps(self) -> int:
        return min(self.sampler.num_steps, self.steps_limit or self.sampler.num_steps)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_start_step(self, step: int) -> None:
        self.sampler.set_start_step(step)

    def __iter__(self) -> Iterator[Batch]:
        batches = self._gathered() if self._tensors is not None else self._loaded()
        if self.num_steps < self.sampler.num_steps:
            return itertools.islice(batches, max(self.num_steps - self.sampler.start_step, 0))
        return batches

    def _loaded(self) -> Iterator[Batch]:
        steps = range(self.sampler.start_step, self.sampler.num_steps)
        for step, batch in zip(steps, self._loader):
            inputs, targets = split_sample(batch, self.target_key)
            targets = self.prepare_targets(to_device(targets, self.device))
            yield Batch(step, _placed(inputs, self.device, self.channels_last), targets, self.sampler.global_size(step))

    def _gathered(self) -> Iterator[Batch]:
        # One gather for the whole epoch, then each step's batch is a view of the next rows: per-step
        # indexing costs about a fifth of a small model's step, and gathering a few steps at a time (less
        # memory) measured slower here, its random reads hitting a cold cache every time (bench/).
        steps, index, sizes = self.sampler.rank_epoch()
        if not steps:
            return
        index = index.to(self.device)
        tensors, all_targets = self._tensors
        gathered = [
            _placed(torch.index_select(t, 0, index), self.device, self.channels_last)  # ~2x t[index]
            for t in tensors
        ]
        targets = torch.index_select(all_targets, 0, index)
        if self._transform is not None:
            yield from self._transformed(steps, gathered[0], targets, sizes, index)
            return
        if len(gathered) == 1:
            for step, x, y in zip(steps, gathered[0].split(sizes), targets.split(sizes)):
                yield Batch(step, x, y, self.sampler.global_size(step))
            return
        pieces = [t.split(sizes) for t in gathered]
        for position, (step, y) in enumerate(zip(steps, targets.split(sizes))):
            yield Batch(step, MultipleInputs(p[position] for p in pieces), y, self.sampler.global_size(step))

    def _transformed(self, steps, images, targets, sizes, index) -> Iterator[Batch]:
        transform = self._transform
        draws = None
        if transform.is_random:  # once per epoch, onto the device the batches are on
            draws = {
                k: v.to(images.device)
                for k, v in transform.draws(self.sampler.epoch, self.sampler.dataset_size).items()
            }
            index = index.to(images.device)
        for step, x, y, where in zip(steps, images.split(sizes), targets.split(sizes), index.split(sizes)):
            if draws is not None:
                x = transform.augment(x, {k: v[where] for k, v in draws.items()})
            yield Batch(step, transform(x), y, self.sampler.global_size(step))


class EvalBatches:
    """This rank's slice of the evaluation set, as whole fixed-size batches (see sampling.eval_batch_ranges)."""

    def __init__(
        self,
        dataset: Dataset,
        eval_batch_size: int,
        rank: int,
        world_size: int,
        device: torch.device,
        *,
        tensor_path: bool,
        options: LoaderOptions,
        seed: int,
        prepare_targets: PrepareTargets = _same,
        channels_last: bool = False,
        target_key: str | None = None,
        streams: bool = False,
    ):
        self.channels_last = channels_last
        self.target_key = target_key
        self.prepare_targets = prepare_targets
        num_samples = len(dataset)  # type: ignore[arg-type]
        self.dataset = dataset
        self.num_batches = -(-num_samples // eval_batch_size)
        # The most batches any rank owns (ranks own contiguous runs of floor(b*r/w)..floor(b*(r+1)/w);
        # with streams, every rank a part of every batch).
        self.most_per_rank = self.num_batches if streams else -(-self.num_batches // world_size)
        self.ranges = eval_batch_ranges(num_samples, eval_batch_size, rank, world_size, streams)
        self.device = device
        self._transform = getattr(dataset, "batch_transform", None) if tensor_path else None
        if tensor_path:
            self._tensors = _on_device(dataset, device, prepare_targets)
        else:
            self._tensors = None
            batch_sampler = [list(range(part.start, part.stop, part.step or 1)) for _, part in self.ranges]
            self._loader = _loader(dataset, batch_sampler, device, options, seed, rank)

    def __iter__(self) -> Iterator[Batch]:
        if self._tensors is not None:
            inputs, targets = self._tensors
            for index, part in self.ranges:
                x = _inputs([_placed(t[part], self.device, self.channels_last) for t in inputs])
                if self._transform is not None:
                    x = self._transform(x)
                yield Batch(index, x, targets[part], len(targets[part]))
            return
        for (index, part), batch in zip(self.ranges, self._loader):
            inputs, targets = split_sample(batch, self.target_key)
            yield Batch(
                index,
                _placed(inputs, self.device, self.channels_last),
                self.prepare_targets(to_device(targets, self.device)),
                len(range(part.start, part.stop, part.step or 1)),
            )

    def filler_inputs(self) -> Any:
        """Inputs of one sample (the set's first), on the device: for the forward passes a rank adds when
        every rank must run as many as the others (a sharded model gathers its weights in each)."""
        inputs, _ = split_sample(default_collate([self.dataset[0]]), self.target_key)
        x = _placed(inputs, self.device, self.channels_last)
        return self._transform(x) if self._transform is not None else x


def build_train_batches(
    dataset: Dataset, setup: BatchSetup, *, global_batch_size: int, shuffle: bool, steps_per_epoch: int | None = None
) -> TrainBatches:
    sampler = GlobalBatchSampler(
        dataset,
        num_replicas=setup.world_size,
        rank=setup.rank,
        global_batch_size=global_batch_size,
        shuffle=shuffle,
        seed=setup.seed,
    )
    batches = TrainBatches(
        dataset,
        sampler,
        setup.device,
        tensor_path=use_tensor_path(dataset, setup.loader),
        options=setup.options,
        **setup.placed(),
    )
    batches.steps_limit = steps_per_epoch
    return batches


def build_eval_batches(dataset: Dataset, setup: BatchSetup, *, eval_batch_size: int) -> EvalBatches:
    return EvalBatches(
        dataset,
        eval_batch_size,
        setup.rank,
        setup.world_size,
        setup.device,
        tensor_path=use_tensor_path(dataset, setup.loader),
        options=setup.options,
        streams=setup.streams,
        **setup.placed(),
    )
