"""strategy: exact (spelt trainer.exact: true too): data parallelism without DistributedDataParallel, whose
gradient sum no world size changes.

Float addition is not associative: DDP's all-reduce adds per-rank partial sums in an order set by the
world size (and by the ring), so 1 and N processes end with weights a few ulps apart that training
magnifies. Here the chunks' gradients are summed by strategies/exact_sum.py: each rounded onto a grid
every rank agrees on (from the global maximum of each tensor and the chunk count only), fine enough to
lose nothing float32 can see and coarse enough that the sum is exact in float64 in any order and grouping.

The model is not wrapped (DDP would all-reduce in float32 inside backward): rank 0's weights are
broadcast once, and from then on every rank takes the same optimizer step on the same gradients.

One optimizer step as fixed chunks of the global batch (ExactStrategy.gradients). Which samples form a
chunk, and what randomness it sees, must not depend on the world size:
- the global batch's positions are dealt to chunks round-robin: chunk j holds positions j, j+K, j+2K, ...
  (K = global_batch_size / exact_chunk chunks). The sampler deals positions to ranks the same way (rank r
  holds r, r+W, ...), so when W divides K, chunk j lies whole on rank j mod W, and rank r's local rows
  l, l+K/W, l+2K/W, ... are chunk r + l*W, in the chunk's own order;
- before each chunk's forward, torch's generator is seeded from (seed, global step, chunk): dropout and any
  other draw inside the model gives the same mask to the same sample on any world size;
- each chunk runs forward and backward alone, with the same shapes wherever it runs, and its loss is its
  share of the global batch's mean (a full chunk's mean / K; a short chunk's sum / the global batch size,
  as the uneven last batch has): the chunks' gradients add up to the gradient of the global mean;
- the gradients are summed by `strategies.exact_sum` (rounded onto a shared grid, then float64 sums that
  are exact in any order).
The uneven last batch is cut the same way (some chunks one sample shorter, or empty). Accumulation
changes nothing here: a chunk already is the unit of memory (trainer.accumulate_steps is ignored).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from distrain.data.structures import num_samples, tree_map
from distrain.errors import ConfigError
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.seeding import mix_seed
from distrain.strategies.base import Gradients, refuse_several
from distrain.strategies.exact_sum import Chunk, ExactSum, exact_sum
from distrain.strategies.native import NativeStrategy


def chunk_seed(seed: int, global_step: int, chunk: int) -> int:
    """The generator seed of chunk `chunk` of global step `global_step` (0-based, the step being taken)."""
    return mix_seed(seed, global_step, chunk, salt=65_537)


def seed_generators(seed: int, device: torch.device) -> None:
    """Seed the generators a model draws from on `device`: torch's CPU generator, and the device's own.
    (Not torch.manual_seed: it also seeds every CUDA, XPU and MTIA device, ~10 ms a call here.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)


def count_chunks(global_batch_size: int, chunk: int, world_size: int, lanes: int | None) -> int:
    """K, the chunks of every global batch (the same on every world size), checked to divide over the
    ranks. A sharded stream's chunks are its lanes (a lane's samples of a step are read by one rank,
    whatever the world size: data/stream_plan.py), dealt to ranks by lane: any world size."""
    if lanes:
        return lanes
    if global_batch_size % chunk:
        raise ConfigError(
            "trainer.exact_chunk",
            f"{chunk} does not divide data.global_batch_size {global_batch_size}",
            "use a chunk size that divides the global batch (e.g. the per-rank batch of the largest world size)",
        )
    chunks = global_batch_size // chunk
    if chunks % world_size:
        sizes = [n for n in range(1, chunks + 1) if chunks % n == 0]
        raise ConfigError(
            "trainer.exact_chunk",
            f"cuts each global batch into {chunks} chunks, which do not divide over {world_size} processes",
            f"run on {', '.join(map(str, sizes))} processes, or choose a chunk size that makes the chunk count "
            f"a multiple of {world_size}",
        )
    return chunks


def running_statistics(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the layers whose buffers a training forward updates from its batch (BatchNorm's
    running mean and variance; InstanceNorm with track_running_stats): RunningStatistics replays them."""
    from torch.nn.modules.batchnorm import _NormBase

    return [
        (name or "the model", m)
        for name, m in model.named_modules()
        if isinstance(m, _NormBase) and m.track_running_stats
    ]


class RunningStatistics:
    """Running statistics (BatchNorm's) updated as one process would, on any world size.

    Each chunk normalises with its own batch statistics (the same samples on any world size), but a rank
    sees only its chunks, so the running mean and variance cannot be left to each layer. Instead, while
    the chunks run (`capturing`), each layer's momentum is 1, so after a training-mode call its buffers
    hold exactly that call's statistics (1 * s + 0 * r), which a forward hook copies into the chunk's row
    of a [chunks, values + ran flags] table. Every rank's rows are summed (each row written by one rank,
    zeros elsewhere: exact), and every rank replays the updates from the step's starting buffers in global
    chunk order, r <- (1 - m) * r + m * s_j (m = 1 / batches seen when the layer's momentum is None), for
    the layers that ran in that chunk in training mode (a skipped block or a frozen layer: no update), as
    one process runs the same replay: bitwise the same buffers everywhere, so evaluation with them is too.
    A layer called twice in one chunk's forward is refused by name (one update per chunk is replayed)."""

    def __init__(self, layers: list[tuple[str, nn.Module]], chunks: int, key: str = "strategy"):
        self.names, self.layers = [n for n, _ in layers], [m for _, m in layers]
        self.chunks, self.key = chunks, key
        self.buffers = [[t for t in (m.running_mean, m.running_var) if t is not None] for m in self.layers]
        sizes = [sum(t.numel() for t in bufs) for bufs in self.buffers]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.width = sum(sizes)  # then one "ran" flag per layer
        self.current: int | None = None

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """The step's chunks run inside: starting buffers kept, momentum 1, hooks recording each call."""
        self.start_buffers = [[t.clone() for t in bufs] for bufs in self.buffers]
        self.start_counts = [m.num_batches_tracked.clone() for m in self.layers]
        self.momenta = [m.momentum for m in self.layers]
        device = self.layers[0].num_batches_tracked.device
        self.table = torch.zeros(self.chunks, self.width + len(self.layers), dtype=torch.float32, device=device)
        self._ran: set[tuple[int, int]] = set()
        hooks = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]
        for m in self.layers:
            m.momentum = 1.0
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for m, momentum in zip(self.layers, self.momenta):
                m.momentum = momentum
            self.current = None

    def chunk(self, index: int) -> None:
        """The chunk whose forward runs next."""
        self.current = index

    def _hook(self, i: int) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if not module.training or self.current is None:
                return  # a frozen layer (eval mode) updates nothing
            row = self.table[self.current]
            if (self.current, i) in self._ran:  # kept on the host: no device read per call
                raise ConfigError(
                    self.key,
                    f"cannot replay {self.names[i]}'s running statistics: it runs twice in one forward "
                    "(exact mode replays one update per layer and chunk)",
                    "give each call its own BatchNorm layer, or trainer.exact=false",
                )
            values = torch.cat([t.reshape(-1).float() for t in self.buffers[i]])
            row[self.starts[i] : self.starts[i] + values.numel()] = values
            row[self.width + i] = 1.0
            self._ran.add((self.current, i))

        return record

    def finish(self) -> None:
        """Every rank's rows summed (collective), then the updates replayed in chunk order."""
        table = dist.all_reduce_sum(self.table)
        for bufs, starts in zip(self.buffers, self.start_buffers):
            for t, start in zip(bufs, starts):
                t.copy_(start)
        for m, count in zip(self.layers, self.start_counts):
            m.num_batches_tracked.copy_(count)
        ran = table[:, self.width :].tolist()  # which layers ran in which chunk: one host read a step
        for row, flags in zip(table, ran):
            for i, (m, momentum) in enumerate(zip(self.layers, self.momenta)):
                if flags[i] == 0:
                    continue  # not run in that chunk (an empty chunk, a skipped block, a frozen layer)
                m.num_batches_tracked.add_(1)
                factor = momentum if momentum is not None else 1.0 / float(m.num_batches_tracked)
                at = self.starts[i]
                for t in self.buffers[i]:
                    t.mul_(1.0 - factor).add_(row[at : at + t.numel()].view_as(t).to(t.dtype), alpha=factor)
                    at += t.numel()


class ExactChunks:
    """Which of a global batch's K chunks this rank holds, cut from its share of the batch."""

    def __init__(self, chunks: int, rank: int, world_size: int):
        self.chunks, self.rank, self.world_size = chunks, rank, world_size
        self.per_rank = chunks // world_size  # checked to divide (count_chunks)

    def local_chunks(self, batch: Any, keep_empty: bool = False) -> list[tuple[int, Any, Any]]:
        """(global chunk index, inputs, targets) of this rank's chunks; empty chunks (uneven last batch)
        left out, or with `keep_empty` kept as zero-row tensors (a sharded model's forwards are collectives:
        every rank runs as many). Each is a contiguous copy: the same memory layout as in a 1-process run."""
        if batch.lanes is not None:  # a stream's share: each lane's rows, contiguous, in lane order
            out, start = [], 0
            for lane, rows in batch.lanes:

                def part(t: torch.Tensor, a: int = start, b: int = start + rows) -> torch.Tensor:
                    return t[a:b]

                out.append((lane, tree_map(part, batch.inputs), tree_map(part, batch.targets)))
                start += rows
            return out
        if self.per_rank == 1:  # the chunk is this rank's whole share: no copy
            return [(self.rank, batch.inputs, batch.targets)] if keep_empty or num_samples(batch.targets) else []
        out = []
        for local in range(self.per_rank):

            def rows(t: torch.Tensor, start: int = local) -> torch.Tensor:
                return t[start :: self.per_rank].contiguous()

            targets = tree_map(rows, batch.targets)
            if keep_empty or num_samples(targets):
                out.append((self.rank + local * self.world_size, tree_map(rows, batch.inputs), targets))
        return out


class ExactStrategy(NativeStrategy):
    """strategy: exact (or trainer.exact: true): the bare model (weights broadcast from rank 0 once), each
    chunk's forward and backward alone, and the chunks' gradients summed by ExactSum; DDP's step after.
    Per-sample train figures are kept in multiples of 2^-24, so their sums are order-free too."""

    checkpoint_format = "whole"
    figure_units = float(2**24)

    def __init__(self, cfg: Any, ctx: DistContext, lanes: int | None = None):
        super().__init__(cfg, ctx)  # fp16: the scaler (NativeStrategy's) scales every chunk's loss alike
        self.seed = cfg.seed
        self.key = "strategy" if cfg.strategy == "exact" else "trainer.exact"  # as the config spelt it
        chunks = count_chunks(cfg.data.global_batch_size, cfg.trainer.exact_chunk, ctx.world_size, lanes)
        self.chunking = ExactChunks(chunks, ctx.rank, ctx.world_size)
        self.reduce: ExactSum | None = None
        self.statistics: RunningStatistics | None = None  # BatchNorm's, replayed in chunk order (setup)
        # Reductions inside a CPU kernel may be split by the intra-op thread count: the same count in every
        # process of every world size (not torchrun's OMP_NUM_THREADS=1 against a lone process's all
        # cores), so a chunk computed in a 1-process run and by rank 3 of 4 runs the same instructions.
        torch.set_num_threads(cfg.trainer.exact_threads)

    def setup(self, model: nn.Module) -> nn.Module:
        refuse_several(model, self.key, "exact" if self.key == "strategy" else "true")
        synced = [name or "the model" for name, m in model.named_modules() if isinstance(m, nn.SyncBatchNorm)]
        if synced:
            raise ConfigError(
                self.key,
                f"cannot make SyncBatchNorm exact ({', '.join(synced)}): it sums statistics over the ranks "
                "inside each forward, and exact mode runs each chunk alone",
                "use nn.BatchNorm (exact mode normalises each chunk with its own statistics, the same on any "
                "world size, and replays the running statistics in chunk order), or trainer.exact=false",
            )
        layers = running_statistics(model)
        self.statistics = RunningStatistics(layers, self.chunking.chunks, self.key) if layers else None
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        # Not DistributedDataParallel (it would all-reduce in float32 inside backward). What its
        # constructor does for us otherwise: every rank starts from rank 0's weights and buffers.
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast_tensor(tensor.data)
        self.reduce = exact_sum([p for p in model.parameters() if p.requires_grad], self.chunking.chunks)
        return self._compiled(model), optimizer

    def release(self) -> None:
        if self.reduce is not None:
            self.reduce.release()  # the sum's buffers: float64 counts and a float32 result, the model's size

    def chunk_loss(
        self, objective: Any, model: nn.Module, inputs: Any, targets: Any, global_size: int
    ) -> tuple[torch.Tensor, Any]:
        """(one chunk's loss, what the meter records). As if each of the K chunks were a rank of its own: a
        full chunk's loss is its mean (the loss's own fused kernel), any other its sum over the global batch
        size x K; / K then makes the chunks add up to the global mean. Which applies depends on the chunk's
        size only, the same on every world size."""
        parts = self.chunking.chunks
        loss, record = objective.forward_loss(model, inputs, targets, parts, global_size)
        return (loss / parts if parts > 1 else loss), record

    def gradients(self, model: nn.Module, batch: Any, objective: Any, global_step: int) -> Gradients:
        """Each of this rank's chunks alone (run_chunks), then the exact sum as the gradients. Collective."""
        chunks, records, step_loss = self.run_chunks(model, batch, objective, global_step)
        if self.scaler is not None and not chunks:
            # fp16, a rank without a chunk this step (an uneven last batch): the scaler makes its scale on
            # its first scale() call, and the step's unscale needs it.
            self.scaler.scale(torch.zeros((), device=self.reduce.device))
        if self.statistics is not None:
            self.statistics.finish()  # collective, like the sum below: every rank calls both every step
        for p, grad in zip(self.reduce.params, self.reduce(chunks)):
            p.grad = grad
        return Gradients(step_loss, records, ranks_average=False)

    def run_chunks(
        self, model: nn.Module, batch: Any, objective: Any, global_step: int, keep_empty: bool = False
    ) -> tuple[list[Chunk], list[Any], torch.Tensor]:
        """(held chunk gradients, meter records, the rank's loss) of this rank's chunks of the step, each
        run alone: its generators seeded from (seed, step, chunk), its loss its share of the global
        batch's mean (the same on any world size), its gradients taken off the model (`take_gradients`)
        before the next. With `keep_empty`, empty chunks run too (a sharded model's forwards are
        collectives), their gradients discarded."""
        reduce, statistics = self.reduce, self.statistics
        chunks, records, step_loss = [], [], None
        with statistics.capturing() if statistics is not None else contextlib.nullcontext():
            for index, inputs, targets in self.chunking.local_chunks(batch, keep_empty=keep_empty):
                present = not keep_empty or num_samples(targets) > 0
                seed_generators(chunk_seed(self.seed, global_step, index), reduce.device)
                if statistics is not None:
                    statistics.chunk(index if present else None)  # an empty chunk records nothing
                with self.precision.autocast():
                    loss, record = self.chunk_loss(objective, model, inputs, targets, batch.global_size)
                # fp16: the same scale on every rank (its updates read the exact sum's overflow, the same
                # everywhere); the unscale in the step multiplies by a power of two, exact.
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
                grads = self.take_gradients(model)
                if present:
                    chunks.append(reduce.chunk(grads))
                    records.append(record)
                    step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
        if step_loss is None:  # no chunk on this rank (an uneven last batch)
            step_loss = torch.zeros((), device=reduce.device)
        return chunks, records, step_loss

    def take_gradients(self, model: nn.Module) -> list[torch.Tensor | None]:
        """One chunk's gradients, taken off the parameters (left without one, for the next chunk)."""
        params = self.reduce.params
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        return grads
