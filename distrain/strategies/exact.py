"""trainer.exact: DDP without DistributedDataParallel, whose gradient sum no world size changes.

Float addition is not associative: DDP's all-reduce adds per-rank partial sums in an order set by the
world size (and by the ring), so 1 and N processes end with weights a few ulps apart that training
magnifies. Here each chunk's gradient is turned into integers on a scale every rank agrees on, and
integers add exactly in any order and grouping:

    scale_i = 2^(62 - ceil(log2(chunks)) - e_i)   e_i: exponent of max |g| of tensor i over all chunks
                                                  (one MAX all-reduce of one float per tensor)
    q       = round(g_chunk * scale_i)            int64, per chunk; |q| < 2^62 / chunks
    Q       = sum of q over this rank's chunks    exact
    Q       = all-reduce SUM of Q (int64)         exact, any order
    g       = float32(float64(Q) / scale_i)       the same conversion on every rank

The scale depends only on the global maximum and the global number of chunks, never on which rank
holds which chunk, so every world size gets the same bits. Within a tensor, values more than ~2^58 below
its largest gradient round to zero (float32 keeps 24 bits: nothing a step could see).

The model is not wrapped (DDP would all-reduce in float inside backward): rank 0's weights are
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

_BITS = 62  # of int64's 63 magnitude bits: one spare, so a sum of `chunks` terms below 2^62 cannot overflow


def headroom(chunks: int) -> int:
    """The exponent a tensor's largest gradient is scaled to: `chunks` such terms still sum below 2^62."""
    return _BITS - math.ceil(math.log2(max(chunks, 1)))


class ExactSum:
    """The fixed-point sum of chunk gradients for one model's parameters (their layout computed once).

    Vectorised over the whole model: one flat buffer per chunk, a per-tensor maximum by scatter, one
    scale per tensor spread to its elements; about twenty kernels a step whatever the number of tensors.
    """

    def __init__(self, params: list[nn.Parameter], chunks: int):
        self.params, self.headroom = params, headroom(chunks)
        self.numels = [p.numel() for p in params]
        device = params[0].device if params else torch.device("cpu")
        self.device = device
        self.segment = torch.repeat_interleave(  # element -> its tensor's index
            torch.arange(len(params), device=device), torch.tensor(self.numels, device=device)
        )
        self._exponents: tuple[int, ...] | None = None  # the last step's, with their per-element scale
        self._scale = torch.ones(0, dtype=torch.float64, device=device)

    def flat(self, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """One chunk's gradients as one float32 vector (a missing gradient counts as zeros)."""
        return torch.cat(
            [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, self.params)]
        )

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

    def scales(self, max_abs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """From the maxima over all ranks: each element's scale (a power of two: its tensor's largest value
        maps just below 2^headroom), and where the sum is not finite (None: nowhere).

        Worked out on the host (one read of one float per tensor): a handful of scalar kernels would cost
        more than the sum itself on a small model, and the exponents rarely change from step to step."""
        maxima = max_abs.tolist()
        exponents = tuple(self.headroom - math.frexp(m)[1] if 0 < m < math.inf else 0 for m in maxima)
        if exponents != self._exponents:
            per_tensor = torch.tensor([math.ldexp(1.0, e) for e in exponents], dtype=torch.float64)
            self._scale, self._exponents = per_tensor.to(self.device)[self.segment], exponents
        bad = None
        if any(m == math.inf for m in maxima):
            bad = torch.tensor([m == math.inf for m in maxima], device=self.device)[self.segment]
        return self._scale, bad

    def partial(self, flats: list[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
        """This rank's chunks summed in int64 (exact)."""
        total = None
        for flat in flats:
            fixed = flat.double().mul_(scale).round_().to(torch.int64)  # the product is exact in float64
            total = fixed if total is None else total.add_(fixed)
        return total if total is not None else torch.zeros(len(self.segment), dtype=torch.int64, device=self.device)

    def finish(self, total: torch.Tensor, scale: torch.Tensor, bad: torch.Tensor | None) -> list[torch.Tensor]:
        """The summed integers back to float32, one tensor per parameter (NaN where not finite)."""
        summed = total.double().div_(scale).float()
        if bad is not None:
            summed = torch.where(bad, math.nan, summed)
        return [t.view(p.shape) for t, p in zip(torch.split(summed, self.numels), self.params)]

    def __call__(self, chunk_grads: list[list[torch.Tensor | None]]) -> list[torch.Tensor]:
        """The sum over this rank's chunks and all ranks, bitwise the same however the chunks are split over
        ranks and in whatever order the ranks add up. Collective: two all-reduces."""
        flats = [self.flat(grads) for grads in chunk_grads]
        scale, bad = self.scales(dist.all_reduce_max(self.local_max(chunk_grads)))
        total = dist.all_reduce_sum(self.partial(flats, scale))  # int64: exact whatever the order of the ranks
        return self.finish(total, scale, bad)


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
