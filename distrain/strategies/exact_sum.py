"""The order-free sum of exact mode's chunk gradients: bitwise the same however the chunks are split over
ranks and in whatever order the ranks add up.

    reduce = exact_sum(params, chunks)          # once; chunks = K, the chunks of every global batch
    held = [reduce.chunk(grads) for ...]        # after each local chunk's backward
    grads = reduce(held)                        # collective: two all-reduces

Float addition is not associative: DDP's all-reduce adds per-rank partial sums in an order set by the
world size (and by the ring). Here every chunk's gradient is first rounded onto a grid every rank agrees
on, fine enough to lose nothing float32 can see next to the tensor's largest value (a value below about
2^-28 of it, 2^-24 for 12 chunks, keeps fewer than float32's 24 bits) and coarse enough that every sum of
up to K such values is exact in float64; then additions in any order and grouping give the same bits:

    e_i   = exponent of max |g| of tensor i over all chunks (max < 2^e_i; one MAX all-reduce, one float
            per tensor)
    x_i   = e_i - 52 + ceil(log2(K)) + 1                grid step 2^x_i (~2^-47 of the largest value for 12
                                                        chunks, 2^-51 for one)
    n     = round(g * 2^-x_i)                           a whole count of grid steps below 2^52: the
                                                        multiply is exact (but for values far below
                                                        one step, which round to 0 either way), round()
                                                        (ties to even) the one rounding, in the
                                                        gradient's own float32
    N     = sum of n over this rank's chunks, then an all-reduce SUM, in float64: exact, as every partial
            sum is a whole number below 2^53
    g     = float32(N * 2^x_i)                          one rounding, the same on every rank

The grid depends only on the global maximum and K, never on which rank holds which chunk, so every world
size gets the same bits. A tensor whose maximum is 0, NaN or Inf gets x = 0 (whole numbers: zeros stay
zeros, a NaN or Inf stays for the non-finite checks: skip_step and fp16's scaler skip that step; the
default, stop, takes it and stops at the next check, before any save). A sum of one term (K = 1: one
process, the chunk the whole batch) needs no float64: its counts are scaled back in place, the same bits
as the float64 route gives (but the sign of a zero). A float64 parameter's gradient stays float64 (its
counts scaled back in float64); a float16 or bfloat16 one is summed as float32 and converted back.

Two layouts, the same bits (`exact_sum` picks): ExactSum works tensor by tensor with torch's fused
foreach kernels, with no copy of float32 gradients, on any device. SmallExactSum, for a small float32 model
on the CPU, copies each chunk's gradients into one vector and makes every pass one numpy call over it:
for a model of a few thousand parameters the cost is the number of calls, not their work (the XOR
model's step is ~270 us, and each torch call in it ~5 us).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from distrain.launch import dist


class Chunk(NamedTuple):
    """One chunk's gradients (None: no gradient, zeros), per tensor their largest magnitude (NaN where a
    value is NaN), and for SmallExactSum the float32 vector that holds the gradients (`grads` are its views)."""

    grads: list[torch.Tensor | None]
    max_abs: torch.Tensor | np.ndarray  # SmallExactSum's: a numpy vector
    vector: np.ndarray | None = None


def times_power_of_two(tensors: list[torch.Tensor], exponents: list[int]) -> None:
    """tensors[i] *= 2^exponents[i], in place, in the tensors' own dtype. A float32 kernel takes its factor
    as a float32, whose normal powers of two end at 2^+-126 (a float64 one at 2^+-1022): a larger exponent
    is applied in two steps, the first to that end (a count times 2^-126 is still a normal number, so only
    the last step can round)."""
    if not tensors:
        return
    ends = [1022 if t.dtype == torch.float64 else 126 for t in tensors]
    first = [max(-end, min(end, k)) for k, end in zip(exponents, ends)]
    torch._foreach_mul_(tensors, [math.ldexp(1.0, k) for k in first])
    rest = [(t, k - f) for t, k, f in zip(tensors, exponents, first) if k != f]
    if rest:
        torch._foreach_mul_([t for t, _ in rest], [math.ldexp(1.0, k) for _, k in rest])


class ExactSum:
    """The exact sum, tensor by tensor (torch's foreach kernels, any device). Phases, per step: `chunk`
    after each local chunk's backward (the gradients held as they are, to be rounded in place; a
    half-precision one as a float32 copy); `local_max` and `grids` (one host read of one float per
    tensor); `round` (the counts, in place); `partial` (the rank's float64 sum of counts); `finish`
    (scaled back into float32, or in place for a float64 parameter). The float64 counts and the float32
    result are buffers kept from step to step, 8 + 4 bytes a parameter: a fresh buffer of a large model's
    size costs more in page faults than the passes themselves. `release` frees them."""

    def __init__(self, params: list[nn.Parameter], chunks: int):
        self.params, self.chunks = params, chunks
        self.spare = math.ceil(math.log2(max(chunks, 1))) + 1  # bits of room for a sum of `chunks` terms
        self.numels = [p.numel() for p in params]
        self.size = sum(self.numels)
        self.device = params[0].device if params else torch.device("cpu")
        self.wide = [i for i, p in enumerate(params) if p.dtype == torch.float64]  # summed back in float64
        self.max_dtype = torch.float64 if self.wide else torch.float32
        self._counts: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # the counts' sum: float64
        self._grads: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # the result: float32

    def _buffer(self, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
        flat = torch.empty(self.size, dtype=dtype, device=self.device)
        return flat, [t.view(p.shape) for t, p in zip(flat.split(self.numels), self.params)]

    def release(self) -> None:
        self._counts, self._grads = None, None

    def chunk(self, grads: list[torch.Tensor | None]) -> Chunk:
        """One chunk's gradients, held, and per tensor the largest |g|."""
        grads = [g.float() if g is not None and g.dtype in (torch.float16, torch.bfloat16) else g for g in grads]
        max_abs = torch.zeros(len(self.params), dtype=self.max_dtype, device=self.device)
        sized = [i for i, g in enumerate(grads) if g is not None and g.numel()]
        if not sized:
            return Chunk(grads, max_abs)
        # min and max per tensor: no temporary |g| of the model's size (a fresh one costs its page faults)
        low, high = zip(*(torch.aminmax(grads[i]) for i in sized))  # type: ignore[arg-type]
        maxima = torch.maximum(torch.stack(high), torch.stack(low).neg()).to(self.max_dtype)  # NaN propagates
        if len(sized) == len(grads):
            return Chunk(grads, maxima)
        max_abs[sized] = maxima
        return Chunk(grads, max_abs)

    def local_max(self, chunks: list[Chunk]) -> torch.Tensor:
        """Per tensor, the largest magnitude over this rank's chunks (+inf where a value is not finite)."""
        if not chunks:
            return torch.zeros(len(self.params), dtype=self.max_dtype, device=self.device)
        max_abs = chunks[0].max_abs
        for chunk in chunks[1:]:
            max_abs = torch.maximum(max_abs, chunk.max_abs)  # NaN propagates...
        # ...and becomes +inf, which the MAX all-reduce keeps (and +inf stays +inf: not the largest float)
        return torch.nan_to_num(max_abs, nan=math.inf, posinf=math.inf)

    def global_max(self, chunks: list[Chunk]) -> list[float]:
        """Per tensor, the largest magnitude over all ranks' chunks (+inf where a value is not finite;
        SmallExactSum in one process leaves a NaN as it is, which `grids` takes alike). Collective: one MAX
        all-reduce, one host read."""
        return dist.all_reduce_max(self.local_max(chunks)).tolist()

    def grids(self, max_abs: list[float]) -> list[int]:
        """Per tensor, from the maxima over all ranks, the exponent x of its grid step (module docstring)."""
        return [math.frexp(m)[1] - 52 + self.spare if 0 < m < math.inf else 0 for m in max_abs]

    def round(self, chunks: list[Chunk], grids: list[int]) -> None:
        """Each chunk's gradients, in place, as whole counts of their grid step."""
        for chunk in chunks:
            present = [i for i, g in enumerate(chunk.grads) if g is not None]
            if present:
                tensors = [chunk.grads[i] for i in present]
                times_power_of_two(tensors, [-grids[i] for i in present])  # type: ignore[arg-type]
                torch._foreach_round_(tensors)

    def partial(self, chunks: list[Chunk]) -> torch.Tensor:
        """This rank's chunks' counts summed in float64, in the sum's buffer. From zero, so that a zero is
        +0 wherever it is summed (round() leaves -0 from a small negative value, and -0 + -0 is -0)."""
        if self._counts is None:
            self._counts = self._buffer(torch.float64)
        total, views = self._counts
        total.zero_()
        for chunk in chunks:
            present = [i for i, g in enumerate(chunk.grads) if g is not None]
            if present:
                torch._foreach_add_([views[i] for i in present], [chunk.grads[i] for i in present])  # type: ignore[misc]
        return total

    def finish(self, total: torch.Tensor, grids: list[int]) -> list[torch.Tensor]:
        """The sum of counts scaled back into the parameters' gradients: views of one float32 buffer kept
        from step to step (exact products in float64, one rounding each to float32); for a float64
        parameter, of the counts' own buffer, scaled in place; for a half-precision one, a copy. The loop
        sets the gradients to None between steps; a callback that keeps a gradient past its step sees it
        overwritten by the next."""
        if self._grads is None:
            self._grads = self._buffer(torch.float32)
        views, counts = list(self._grads[1]), total.split(self.numels)
        for i, (out, n, x) in enumerate(zip(views, counts, grids)):
            if self.params[i].dtype != torch.float64:
                torch.mul(n.view(out.shape), math.ldexp(1.0, x), out=out)  # a float64 factor: x >= -200
        if self.wide:
            times_power_of_two([counts[i] for i in self.wide], [grids[i] for i in self.wide])
            for i in self.wide:
                views[i] = counts[i].view(self.params[i].shape)
        return self._as_params(views)

    def alone(self, chunk: Chunk, grids: list[int]) -> list[torch.Tensor]:
        """A sum of one term: its counts scaled back in place, in their own dtype. Each product is exact,
        or below the smallest normal rounded once, as finish's conversion rounds it: the same bits. The
        result is the chunk's own tensors (SmallExactSum's: its pool's first vector, which the next
        step's first chunk overwrites, as finish's buffer is)."""
        present = [i for i, g in enumerate(chunk.grads) if g is not None]
        times_power_of_two([chunk.grads[i] for i in present], [grids[i] for i in present])  # type: ignore[misc]
        return self._as_params(chunk.grads)

    def _as_params(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        return [
            torch.zeros_like(p)
            if g is None
            else g.to(p.dtype)
            if p.dtype.is_floating_point and p.dtype != g.dtype
            else g
            for g, p in zip(grads, self.params)
        ]

    def __call__(self, chunks: list[Chunk]) -> list[torch.Tensor]:
        """The sum of this rank's chunks (each from `chunk`) and all ranks'. Collective: two all-reduces."""
        return self.sum(chunks, self.global_max(chunks))

    def sum(self, chunks: list[Chunk], max_abs: list[float]) -> list[torch.Tensor]:
        """The sum, from the maxima over all ranks. Collective: one all-reduce (none for one chunk)."""
        grids = self.grids(max_abs)
        self.round(chunks, grids)
        # One chunk in all and one process: its counts are the sum. (A stream of one lane on several ranks
        # has one chunk too, on one rank: every rank then takes the all-reduce below, as collectives need.)
        if self.chunks == 1 and len(chunks) == 1 and not dist.is_distributed():
            return self.alone(chunks[0], grids)
        return self.finish(dist.all_reduce_sum(self.partial(chunks)), grids)


class SmallExactSum(ExactSum):
    """The exact sum for a small float32 model on the CPU: each local chunk's gradients copied into a
    float32 vector of a pool (one per local chunk, handed back by each step's sum), and each pass one
    numpy call over it. The powers of two are applied with ldexp and a per-element exponent (made once a
    step): exact, and, where a result falls below float32's smallest normal, rounded once, as ExactSum's
    float64 conversion rounds it."""

    LIMIT = 1 << 15  # parameters up to which this layout is chosen

    def __init__(self, params: list[nn.Parameter], chunks: int):
        super().__init__(params, chunks)
        self.sized = [i for i, n in enumerate(self.numels) if n]
        self.starts = np.cumsum([0] + [self.numels[i] for i in self.sized])[:-1]  # reduceat's segments
        self.lengths = np.array(self.numels)
        self.finite_below = math.ldexp(1.0, 128 - self.spare)  # maxima below it: no sum reaches 2^128
        self._vectors: list[tuple[np.ndarray, list[torch.Tensor]]] = []
        self._taken = 0  # of the pool's vectors, by this step's chunks
        self._exponents: tuple[list[int], np.ndarray, np.ndarray] = ([], np.empty(0), np.empty(0))  # grids, -x, x

    def release(self) -> None:
        super().release()
        self._vectors, self._taken, self._exponents = [], 0, ([], np.empty(0), np.empty(0))

    def chunk(self, grads: list[torch.Tensor | None]) -> Chunk:
        # _taken goes back to 0 in __call__: a step given up between its chunks and its sum (an exception)
        # leaves the pool one vector longer, no more.
        if len(self._vectors) == self._taken:
            flat, views = self._buffer(torch.float32)
            self._vectors.append((flat.numpy(), views))
        vector, views = self._vectors[self._taken]
        self._taken += 1
        if all(g is not None for g in grads):  # float32, as the parameters
            torch._foreach_copy_(views, grads)
        else:
            vector.fill(0.0)
            present = [i for i, g in enumerate(grads) if g is not None]
            if present:
                torch._foreach_copy_([views[i] for i in present], [grads[i] for i in present])  # type: ignore[misc]
        maxima = np.maximum.reduceat(np.abs(vector), self.starts) if self.sized else None  # NaN propagates
        if len(self.sized) < len(self.params):  # parameters of size zero: no segment of their own
            max_abs = np.zeros(len(self.params), dtype=np.float32)
            if maxima is not None:
                max_abs[self.sized] = maxima
            maxima = max_abs
        return Chunk(views, maxima, vector)  # type: ignore[arg-type]

    def local_max(self, chunks: list[Chunk]) -> torch.Tensor:
        max_abs = self._local_max(chunks)
        return torch.from_numpy(np.where(max_abs == max_abs, max_abs, np.float32(np.inf)))  # NaN: +inf, as ExactSum's

    def _local_max(self, chunks: list[Chunk]) -> np.ndarray:
        if not chunks:
            return np.zeros(len(self.params), dtype=np.float32)
        return chunks[0].max_abs if len(chunks) == 1 else np.maximum.reduce([c.max_abs for c in chunks])  # type: ignore[return-value]

    def global_max(self, chunks: list[Chunk]) -> list[float]:
        if dist.is_distributed():
            return super().global_max(chunks)
        return self._local_max(chunks).tolist()  # no all-reduce to carry a NaN: as it is (module docstring)

    def _element_exponents(self, grids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(-x, x) per element: made when the grids differ from the last step's (often they do not)."""
        if self._exponents[0] != grids:
            down = np.array(grids).repeat(self.lengths)
            self._exponents = (grids, np.negative(down), down)
        return self._exponents[1:]

    def round(self, chunks: list[Chunk], grids: list[int]) -> None:
        up, _ = self._element_exponents(grids)
        for chunk in chunks:
            np.ldexp(chunk.vector, up, out=chunk.vector)
            np.rint(chunk.vector, out=chunk.vector)  # ties to even, as torch.round

    def partial(self, chunks: list[Chunk]) -> torch.Tensor:
        if self._counts is None:
            self._counts = self._buffer(torch.float64)
        total = self._counts[0].numpy()
        total.fill(0.0)  # from zero: +0 for a zero (see ExactSum.partial)
        for chunk in chunks:
            np.add(total, chunk.vector, out=total)
        return self._counts[0]

    def finish(self, total: torch.Tensor, grids: list[int]) -> list[torch.Tensor]:
        if self._grads is None:
            self._grads = self._buffer(torch.float32)
        flat, views = self._grads
        # in float64 (exact), stored as float32 (one rounding)
        np.ldexp(total.numpy(), self._element_exponents(grids)[1], out=flat.numpy(), casting="same_kind")
        return views  # float32, as the parameters

    def alone(self, chunk: Chunk, grids: list[int]) -> list[torch.Tensor]:
        np.ldexp(chunk.vector, self._element_exponents(grids)[1], out=chunk.vector)
        return chunk.grads  # type: ignore[return-value]

    def __call__(self, chunks: list[Chunk]) -> list[torch.Tensor]:
        self._taken = 0  # the pool's vectors are free for the next step's chunks once these are summed
        max_abs = self.global_max(chunks)
        if all(m < self.finite_below for m in max_abs):  # (False for a NaN)
            return self.sum(chunks, max_abs)
        # An Inf or NaN gradient, or a sum that may pass float32's largest value: carried on silently, as
        # torch's kernels carry it in ExactSum, for the non-finite checks to name (numpy would warn).
        with np.errstate(over="ignore", invalid="ignore"):
            return self.sum(chunks, max_abs)


def exact_sum(params: list[nn.Parameter], chunks: int) -> ExactSum:
    """The exact sum's layout for these parameters: SmallExactSum for up to SmallExactSum.LIMIT float32
    parameters on the CPU, ExactSum otherwise. Both give the same bits."""
    small = sum(p.numel() for p in params) <= SmallExactSum.LIMIT
    if params and small and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params):
        return SmallExactSum(params, chunks)
    return ExactSum(params, chunks)
