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
holds which chunk, so every world size gets the same bits. Within a tensor, values more than 2^60 below
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


def exact_scales(max_abs: torch.Tensor, chunks: int) -> list[int]:
    """Per tensor, the power of two (its exponent) that maps gradients of magnitude <= max_abs into int64
    with room for a sum of `chunks` of them. 0 for an all-zero or non-finite tensor."""
    headroom = _BITS - math.ceil(math.log2(max(chunks, 1)))
    mantissa, exponent = torch.frexp(max_abs.double())  # max_abs = mantissa * 2^exponent, mantissa in [0.5, 1)
    return [
        headroom - int(e) if m != 0 and math.isfinite(m) else 0 for m, e in zip(mantissa.tolist(), exponent.tolist())
    ]


def to_fixed(grad: torch.Tensor, exponent: int) -> torch.Tensor:
    """round(grad * 2^exponent) as int64 (the multiplication by a power of two is exact in float64)."""
    return torch.round(grad.double() * math.ldexp(1.0, exponent)).to(torch.int64)


def from_fixed(total: torch.Tensor, exponent: int, dtype: torch.dtype) -> torch.Tensor:
    return (total.double() * math.ldexp(1.0, -exponent)).to(dtype)


def exact_sum(
    chunk_grads: list[list[torch.Tensor | None]], params: list[nn.Parameter], chunks: int
) -> list[torch.Tensor]:
    """The sum of the chunks' gradients over this rank's chunks and all ranks, bitwise the same for any
    split of the `chunks` chunks over any number of ranks. `chunk_grads[c][i]`: chunk c's gradient of
    params[i] (None: no gradient). Collective: two all-reduces."""
    device = params[0].device if params else torch.device("cpu")
    max_abs = torch.zeros(len(params), dtype=torch.float32, device=device)
    for grads in chunk_grads:
        for i, g in enumerate(grads):
            if g is not None:
                # NaN propagates through max (a non-finite gradient leaves the tensor NaN below).
                max_abs[i] = torch.maximum(max_abs[i], g.detach().abs().max().float())
    dist.all_reduce_max(max_abs)
    exponents = exact_scales(max_abs, chunks)
    nonfinite = (~torch.isfinite(max_abs)).tolist()
    totals = []
    for i, p in enumerate(params):
        total = torch.zeros(p.shape, dtype=torch.int64, device=device)
        if not nonfinite[i]:
            for grads in chunk_grads:
                if grads[i] is not None:
                    total += to_fixed(grads[i], exponents[i])
        totals.append(total)
    if totals:
        flat = torch.cat([t.reshape(-1) for t in totals])
        dist.all_reduce_sum(flat)  # int64: exact whatever the order of the ranks
        totals = list(torch.split(flat, [t.numel() for t in totals]))
    out = []
    for i, p in enumerate(params):
        if nonfinite[i]:  # the non-finite guard sees it and stops or skips the step, as in the default mode
            out.append(torch.full(p.shape, float("nan"), dtype=p.dtype, device=device))
        else:
            out.append(from_fixed(totals[i], exponents[i], p.dtype).view(p.shape))
    return out


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
