"""trainer.exact: one optimizer step as fixed chunks of the global batch, the same bits on any world size.

Which samples form a chunk, and what randomness it sees, must not depend on the world size:
- the global batch's positions are dealt to chunks round-robin: chunk j holds positions j, j+K, j+2K, ...
  (K = global_batch_size / exact_chunk chunks). The sampler deals positions to ranks the same way (rank r
  holds r, r+W, ...), so when W divides K, chunk j lies whole on rank j mod W, and rank r's local rows
  l, l+K/W, l+2K/W, ... are chunk r + l*W, in the chunk's own order;
- before each chunk's forward, torch's generator is seeded from (seed, global step, chunk): dropout and any
  other draw inside the model gives the same mask to the same sample on any world size;
- each chunk runs forward and backward alone, with the same shapes wherever it runs, and its loss is its
  per-sample losses summed and divided by the global batch's size (not the rank's): the chunks' gradients
  add up to the gradient of the global mean;
- the gradients are summed by `strategies.exact.ExactSum` (rounded onto a shared grid, then float64 sums
  that are exact in any order).
The uneven last batch is cut the same way (some chunks one sample shorter, or empty). Accumulation
changes nothing here: a chunk already is the unit of memory (trainer.accumulate_steps is ignored).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distrain.config.schema import OptimConfig
from distrain.data import Batch
from distrain.data.structures import num_samples, tree_map
from distrain.errors import ConfigError
from distrain.loop.nonfinite import NonFiniteGuard
from distrain.loop.objective import Objective
from distrain.loop.optim import zero_grad
from distrain.loop.steps import finish_step
from distrain.strategies.exact import ExactSum

_SEED_MOD = 2**63 - 1


def chunk_seed(seed: int, global_step: int, chunk: int) -> int:
    """The generator seed of chunk `chunk` of global step `global_step` (0-based, the step being taken)."""
    return ((seed * 1_000_003 + global_step) * 65_537 + chunk) % _SEED_MOD


def seed_generators(seed: int, device: torch.device) -> None:
    """Seed the generators a model draws from on `device`: torch's CPU generator, and the device's own.
    (Not torch.manual_seed: it also seeds every CUDA, XPU and MTIA device, ~10 ms a call here.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)


def check_exact(cfg: Any, world_size: int, stream: Any) -> None:
    """trainer.exact: the chunks must divide over the ranks (a sharded stream's chunks are its lanes, dealt
    to ranks by lane: any world size). Raised before anything is written."""
    if not cfg.trainer.exact or (stream is not None and stream.shards is not None):
        return
    if cfg.data.global_batch_size % cfg.trainer.exact_chunk:
        raise ConfigError(
            "trainer.exact_chunk",
            f"{cfg.trainer.exact_chunk} does not divide data.global_batch_size {cfg.data.global_batch_size}",
            "use a chunk size that divides the global batch (e.g. the per-rank batch of the largest world size)",
        )
    chunks = cfg.data.global_batch_size // cfg.trainer.exact_chunk
    if chunks % world_size:
        sizes = [n for n in range(1, chunks + 1) if chunks % n == 0]
        raise ConfigError(
            "trainer.exact_chunk",
            f"cuts each global batch into {chunks} chunks, which do not divide over {world_size} processes",
            f"run on {', '.join(map(str, sizes))} processes, or choose a chunk size that makes the chunk count "
            f"a multiple of {world_size}",
        )


def running_statistics(model: nn.Module) -> list[str]:
    """Names of the layers whose buffers a training forward updates from its batch (BatchNorm's running
    mean and variance): each rank would update them from its own chunks only."""
    from torch.nn.modules.batchnorm import _NormBase

    return [
        f"{name or 'the model'} ({type(m).__name__})"
        for name, m in model.named_modules()
        if isinstance(m, _NormBase) and m.track_running_stats
    ]


class ExactStep:
    """This rank's chunks of each global batch, run one by one, and the exact step after them."""

    def __init__(
        self,
        *,
        seed: int,
        chunk: int,
        global_batch_size: int,
        rank: int,
        world_size: int,
        progress: Any,
        lanes: int | None = None,
    ):
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.progress = progress  # the run's Progress: its global step names the step being taken
        # K, the same on every world size. A sharded stream's chunks are its lanes (a lane's samples of a
        # step are read by one rank, whatever the world size: data/stream_plan.py).
        self.chunks = lanes or global_batch_size // chunk
        self.per_rank = self.chunks // world_size  # checked to divide before the run (check_exact)
        self.reduce: ExactSum | None = None

    def local_chunks(self, batch: Batch) -> list[tuple[int, Any, Any]]:
        """(global chunk index, inputs, targets) of this rank's chunks; empty chunks (uneven last batch)
        left out. Each is a contiguous copy: the same memory layout as in a 1-process run."""
        if batch.chunks is not None:  # a stream's share: each lane's rows, contiguous, in lane order
            out, start = [], 0
            for lane, rows in batch.chunks:

                def part(t: torch.Tensor, a: int = start, b: int = start + rows) -> torch.Tensor:
                    return t[a:b]

                out.append((lane, tree_map(part, batch.inputs), tree_map(part, batch.targets)))
                start += rows
            return out
        if self.per_rank == 1:  # the chunk is this rank's whole share: no copy
            return [(self.rank, batch.inputs, batch.targets)] if num_samples(batch.targets) else []
        out = []
        for local in range(self.per_rank):

            def rows(t: torch.Tensor, start: int = local) -> torch.Tensor:
                return t[start :: self.per_rank].contiguous()

            targets = tree_map(rows, batch.targets)
            if num_samples(targets):
                out.append((self.rank + local * self.world_size, tree_map(rows, batch.inputs), targets))
        return out

    def __call__(
        self,
        strategy: Any,
        model: nn.Module,
        optimizer: Any,
        batch: Batch,
        objective: Objective,
        clip: OptimConfig,
        *,
        meter: Any,
        guard: NonFiniteGuard,
    ) -> bool:
        """One optimizer step (as loop.steps.train_step: False when the guard skipped it). Collective."""
        zero_grad(optimizer)
        if self.reduce is None:  # the parameters' layout, once
            self.reduce = ExactSum([p for p in model.parameters() if p.requires_grad], self.chunks)
        params = self.reduce.params
        chunk_grads, seen, step_loss = [], [], torch.zeros((), device=self.reduce.device)
        for index, inputs, targets in self.local_chunks(batch):
            seed_generators(chunk_seed(self.seed, self.progress.global_step, index), self.reduce.device)
            with strategy.autocast():
                # world_size 1: the plain sum over the chunk / the global batch size, on any world size.
                loss, record = objective.forward_loss(model, inputs, targets, 1, batch.global_size, average=False)
            strategy.backward(loss)
            chunk_grads.append([p.grad for p in params])
            for p in params:
                p.grad = None
            seen.append(record)
            step_loss = step_loss + loss.detach()
        for p, grad in zip(params, self.reduce(chunk_grads)):
            p.grad = grad
        return finish_step(strategy, model, optimizer, clip, step_loss, seen, meter=meter, guard=guard)
