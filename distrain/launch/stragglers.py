"""Stragglers named: every logging window, the slowest rank's time a step against the median, with its data
wait and its compute apart, when it is at least `trainer.straggler_ratio` times the median; a summary at
the end of the run.

    TIMES[0] += data wait    # the loop, around `next(batches)`
    TIMES[1] += forward      # strategies/native.py, around each micro-batch's forward
    mine = watch.slots(like=window)                  # at a log step: this rank's times, in its own slots
    summed = sum_over_ranks(torch.cat([window, mine]))   # the window's all-reduce, no collective of its own
    line = watch.read(summed[-watch.width:], steps)  # every rank: the same verdict; rank 0 logs it

What is measured: the time a step's data took to arrive and the time of its forward passes. Not the whole
step: a fast rank waits for a slow one inside the gradient exchange (DDP's, during backward), so the step's
wall time is the same on every rank; the forward runs before any exchange, and a slow device, a slow user
step or a slow data set shows there. The median is the lower one (with 2 ranks: the faster rank). A rank
is named only when its excess costs at least a quarter of the step's wall time: a tiny model's timing noise
is no straggler.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("distrain")

TIMES = [0.0, 0.0]  # this rank's data wait and forward seconds since its last logging window


class Stragglers:
    """One rank's view of the windows' timings (every rank reads the same sums: the same verdicts)."""

    def __init__(self, ratio: float, rank: int, world_size: int):
        self.ratio, self.rank, self.world_size = ratio, rank, world_size
        self.width = 2 * world_size if ratio and world_size > 1 else 0
        self.windows = 0
        self.flagged: dict[int, list[float]] = {}  # rank -> its ratios in the windows it was named

    def slots(self, like: torch.Tensor) -> torch.Tensor:
        """This rank's window times (microseconds) in its two slots, zeros elsewhere; TIMES restarts."""
        out = torch.zeros(self.width, dtype=like.dtype, device=like.device)
        if self.width:
            out[2 * self.rank] = round(TIMES[0] * 1e6)
            out[2 * self.rank + 1] = round(TIMES[1] * 1e6)
        TIMES[0] = TIMES[1] = 0.0
        return out

    def read(self, summed: torch.Tensor, steps: int, last_step: int, step_s: float) -> dict[str, float]:
        """The window's verdict from every rank's times (summed slots): logged by rank 0 when a rank is
        `ratio` times the median or slower and that costs at least a quarter of the step's wall time `step_s`
        (noise on a step of a millisecond is no straggler); returns the figures for the loggers (or {})."""
        if not self.width or steps <= 0:
            return {}
        times = summed.double().reshape(self.world_size, 2).cpu() / 1e6 / steps  # [rank, (data, forward)] a step
        busy = times.sum(dim=1)
        median = float(busy.median())  # the lower median
        slowest = int(busy.argmax())
        worst = float(busy[slowest])
        self.windows += 1
        if median <= 0 or worst < self.ratio * median or worst - median < 0.25 * step_s:
            return {}
        ratio = worst / median
        self.flagged.setdefault(slowest, []).append(ratio)
        if self.rank == 0:
            data, forward = times[slowest].tolist()
            log.warning(
                "straggler: rank %d took %.1f ms a step (data %.1f ms, compute %.1f ms) against a median of %.1f ms "
                "(%.1fx, steps %d-%d): the others wait for it in every exchange",
                slowest,
                1000 * worst,
                1000 * data,
                1000 * forward,
                1000 * median,
                ratio,
                last_step - steps + 1,
                last_step,
            )
        return {"straggler/rank": float(slowest), "straggler/ratio": ratio}

    def summary(self) -> str | None:
        """The end-of-run line: who was named, in how many of the windows, how much slower."""
        if not self.flagged:
            return None
        parts = [
            f"rank {r} in {len(ratios)} of {self.windows} windows (up to {max(ratios):.1f}x the median)"
            for r, ratios in sorted(self.flagged.items(), key=lambda item: -len(item[1]))
        ]
        return "stragglers over the run: " + "; ".join(parts)
