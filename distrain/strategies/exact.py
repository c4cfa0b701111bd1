"""trainer.exact: DDP without DistributedDataParallel, whose gradient sum no world size changes.

Float addition is not associative: DDP's all-reduce adds per-rank partial sums in an order set by the
world size (and by the ring), so 1 and N processes end with weights a few ulps apart that training
magnifies. Here every chunk's gradient is first rounded onto a grid every rank agrees on, fine enough to
lose nothing float32 can see and coarse enough that every sum of up to `chunks` such values is exact in
float64; then additions in any order and grouping give the same bits:

    E_i   = exponent of max |g| of tensor i over all chunks (max < 2^E_i; one MAX all-reduce, one float
            per tensor)
    grid  = 2^(E_i - 52 + ceil(log2(chunks)) + 1)      (~2^-47 of the largest value for 12 chunks)
    q     = g rounded to the grid: (g + C) - C in float64, C = 1.5 * 2^(52 + log2(grid))
    Q     = sum of q over this rank's chunks, then an all-reduce SUM in float64: exact, as every partial
            sum is a multiple of the grid below 2^53 grid steps
    g     = float32(Q)                                 the same conversion on every rank

The grid depends only on the global maximum and the number of chunks, never on which rank holds which
chunk, so every world size gets the same bits.

The model is not wrapped (DDP would all-reduce in float32 inside backward): rank 0's weights are
broadcast once, and from then on every rank takes the same optimizer step on the same gradients.
"""

from __future__ import annotations

import math
from typing import Any, ContextManager

import torch
from torch import nn

from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.strategies.ddp import DDPStrategy
from distrain.strategies.precision import NO_CONTEXT


class ExactSum:
    """The order-free sum of chunk gradients for one model's parameters (their layout computed once): one
    flat float64 buffer per chunk, rounded to each tensor's grid by fused per-tensor adds (torch's
    _foreach kernels, which clip_grad_norm_ and the optimizers use too): about three passes over the
    gradients, one host read of one float per tensor."""

    def __init__(self, params: list[nn.Parameter], chunks: int):
        self.params = params
        self.spare = math.ceil(math.log2(max(chunks, 1))) + 1  # bits of room for a sum of `chunks` terms
        self.numels = [p.numel() for p in params]
        self.device = params[0].device if params else torch.device("cpu")

    def flat(self, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """One chunk's gradients as one float64 vector (a missing gradient counts as zeros)."""
        return torch.cat(
            [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, self.params)]
        ).double()

    def local_max(self, chunk_grads: list[list[torch.Tensor | None]]) -> torch.Tensor:
        """Per tensor, the largest magnitude over this rank's chunks (+inf where a value is not finite)."""
        max_abs = torch.zeros(len(self.params), dtype=torch.float32, device=self.device)
        for grads in chunk_grads:
            present = [i for i, g in enumerate(grads) if g is not None]
            if present:
                # One fused kernel for all the tensors (clip_grad_norm_'s), not one reduction per tensor.
                norms = torch.stack(torch._foreach_norm([grads[i] for i in present], math.inf)).float()
                max_abs[present] = torch.maximum(max_abs[present], norms)
        # A non-finite value becomes +inf, which the MAX all-reduce keeps on every rank.
        return torch.nan_to_num(max_abs, nan=math.inf)

    def offsets(self, max_abs: torch.Tensor) -> list[float]:
        """Per tensor, from the maxima over all ranks: the constant C whose addition and subtraction round
        a float64 value onto the tensor's grid (0: an all-zero or non-finite tensor, left as it is)."""
        return [math.ldexp(1.5, math.frexp(m)[1] + self.spare) if 0 < m < math.inf else 0.0 for m in max_abs.tolist()]

    def partial(self, chunk_grads: list[list[torch.Tensor | None]], offsets: list[float]) -> torch.Tensor:
        """This rank's chunks, each rounded onto the grids, summed (exact: see the module docstring)."""
        total = None
        for grads in chunk_grads:
            flat = self.flat(grads)
            views = list(flat.split(self.numels))
            torch._foreach_add_(views, offsets)  # x + C rounds x to the grid (round half to even)...
            torch._foreach_sub_(views, offsets)  # ...and - C is exact
            total = flat if total is None else total.add_(flat)
        if total is None:
            return torch.zeros(sum(self.numels), dtype=torch.float64, device=self.device)
        return total

    def finish(self, total: torch.Tensor) -> list[torch.Tensor]:
        """The sum as the parameters' gradients (float32, or the parameters' own dtype)."""
        return [
            t.view(p.shape).to(p.dtype if p.dtype.is_floating_point else torch.float32)
            for t, p in zip(torch.split(total.float(), self.numels), self.params)
        ]

    def __call__(self, chunk_grads: list[list[torch.Tensor | None]]) -> list[torch.Tensor]:
        """The sum over this rank's chunks and all ranks, bitwise the same however the chunks are split over
        ranks and in whatever order the ranks add up. Collective: two all-reduces."""
        offsets = self.offsets(dist.all_reduce_max(self.local_max(chunk_grads)))
        return self.finish(dist.all_reduce_sum(self.partial(chunk_grads, offsets)))


def exact_sum(
    chunk_grads: list[list[torch.Tensor | None]], params: list[nn.Parameter], chunks: int
) -> list[torch.Tensor]:
    """The sum of the chunks' gradients (`chunk_grads[c][i]`: chunk c's gradient of params[i], or None)
    over this rank's chunks and all ranks: see ExactSum. Collective."""
    return ExactSum(params, chunks)(chunk_grads)


class ExactStrategy(DDPStrategy):
    """strategy ddp with trainer.exact: the bare model (weights broadcast from rank 0 once), no gradient
    sync in backward; loop/exact.py runs the chunks and calls `exact_sum`."""

    exact = True

    def __init__(self, cfg: Any, ctx: DistContext):
        super().__init__(cfg, ctx)
        # Reductions inside a CPU kernel may be split by the intra-op thread count: the same count in every
        # process of every world size (not torchrun's OMP_NUM_THREADS=1 against a lone process's all
        # cores), so a chunk computed in a 1-process run and by rank 3 of 4 runs the same instructions.
        torch.set_num_threads(cfg.trainer.exact_threads)

    def _wrap(self, model: nn.Module) -> nn.Module:
        # What DDP's constructor does for us otherwise: every rank starts from rank 0's weights and buffers.
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast_tensor(tensor.data)
        return model

    def sync_gradients(self, model: nn.Module, is_last: bool) -> ContextManager:
        return NO_CONTEXT  # nothing to sync: exact_sum reduces after the last chunk
