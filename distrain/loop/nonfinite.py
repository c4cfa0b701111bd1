"""What happens when training diverges? A NaN or Inf loss, gradient or weight has one outcome, chosen by
`trainer.on_nonfinite`:

    stop       (default) every rank stops at the same check with a message naming the first non-finite
               global step and the newest good checkpoint; exit status 3. Every save checks first, so a
               checkpoint with non-finite weights is never written (the good ones stay the newest).
    skip_step  an optimizer step whose averaged gradients, or any rank's loss, hold a NaN or Inf is not
               taken, on every rank alike; its batch is used up (the data order stays that of every other
               run), its samples are left out of the train metrics, and the skips are logged, counted in
               metrics.jsonl (`skipped_steps`) and kept in checkpoints.

Cost. `stop`: one list append per step; the step losses are checked together in one kernel at the checks
(log steps, saves, the end of each epoch, and every 1024 steps), so the step never waits for the device.
`skip_step`: the decision is needed before each optimizer step, so it reads the gradients' finiteness on the
host (one device sync per step, as fp16's GradScaler does) and, on several ranks, all-reduces one flag.
With fp16 precision the GradScaler already skips overflowing steps (and lowers its scale): skip_step leaves
those to it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from distrain.errors import Diverged
from distrain.launch import dist
from distrain.strategies.fsdp import local

log = logging.getLogger("distrain")

_NONE = 2**62  # "no non-finite step seen" in the MIN all-reduce


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no element of `tensors` is NaN or Inf. Each floating tensor's minimum and maximum: a NaN
    anywhere makes both NaN (torch's min and max propagate it), an Inf is one of them; then one look at
    those few values (one host sync). Why not isfinite(t).all(): it writes a bool for every element first;
    timed on one CPU thread, 36M float32 weights: 178 ms against 18 ms, and the weights are checked before
    every save (the save's cost, synchronous or in the background)."""
    ends = []
    for t in tensors:
        if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
            continue  # nothing to check; integers are always finite (and aminmax refuses an empty tensor)
        if t.is_complex():  # aminmax has no order for complex numbers
            ends.append(torch.isfinite(t).all().reshape(1))
        else:
            ends.append(torch.isfinite(torch.stack(torch.aminmax(t))))
    return not ends or bool(torch.cat(ends).all())


class NonFiniteGuard:
    """Watches the step losses (stop) or decides each step (skip_step). `agree_finite` is collective (an
    all-reduce; a broadcast when it raises)."""

    def __init__(
        self,
        mode: str,
        model: nn.Module,
        device: torch.device,
        *,
        start_step: int,
        steps_per_epoch: int,
        scaler: Any = None,
        last_good: Callable[[], str | None] = lambda: None,
    ):
        self.mode, self.model, self.device = mode, model, device
        self.steps_per_epoch, self.last_good = steps_per_epoch, last_good
        self.scaler = scaler
        self._losses: list[torch.Tensor] = []  # this rank's step losses since the last scan
        self._base = start_step  # the global step before self._losses[0]
        self._first_bad: int | None = None  # this rank's first non-finite step, found by a scan
        self._clean_at = -1  # the step of the last check that found everything finite

    # ------------------------------------------------------------------------------------------ per step

    def allows_step(self, loss: torch.Tensor) -> bool:
        """Called once per optimizer step, after backward, with the step's loss (this rank's). False: skip
        the step (the trainer counts it in the run's Progress)."""
        if self.mode == "stop":
            self._losses.append(loss.detach())
            if len(self._losses) >= 1024:  # bounds what is held; one host read per 1024 steps
                self._scan()
            return True
        if self.scaler is not None:
            return True  # fp16: GradScaler skips overflowing steps itself
        grads = [local(p.grad) for p in self.model.parameters() if p.grad is not None]
        # The gradients are averaged over the ranks already (the same everywhere), the loss is this rank's:
        # agree, so that no rank steps while another skips.
        bad = dist.any_true(not all_finite([loss.detach(), *grads]), self.device)
        if bad:
            log.warning(
                "global step %d: NaN or Inf in the loss or the gradients: optimizer step skipped", self._base + 1
            )
        self._base += 1
        return not bad

    def _scan(self) -> None:
        if not self._losses:
            return
        bad = ~torch.isfinite(torch.stack(self._losses).float())
        if self._first_bad is None and bool(bad.any()):
            self._first_bad = self._base + 1 + int(bad.to(torch.int8).argmax())
        self._base += len(self._losses)
        self._losses = []

    # ---------------------------------------------------------------------------------------- the checks

    def agree_finite(self, *, weights: bool = True) -> None:
        """Raise Diverged on every rank alike if any rank saw a non-finite loss (stop) or the weights hold a
        NaN or Inf. Collective: every rank calls it at the same points (before saves, at log steps and
        epoch ends). `weights=False` skips the pass over the parameters (log steps). A second check at
        the same step (an epoch end that also saves) returns at once, on every rank alike."""
        step = self._base + len(self._losses)  # steps seen so far: the same on every rank
        if step == self._clean_at:
            return
        if self.mode == "stop":
            self._scan()
        params = [local(p) for p in self.model.parameters()]  # sharded: this rank's shards (then agreed)
        weights_bad = weights and not all_finite(params)
        first = self._first_bad if self._first_bad is not None else _NONE
        # One reduction: MIN of the first bad step, and MIN of -1 (weights bad) / 0.
        agreed = dist.all_reduce_min(
            torch.tensor([first, -int(weights_bad)], dtype=torch.int64, device=self.device)
        ).tolist()
        if agreed[0] == _NONE and agreed[1] == 0:
            if weights:
                self._clean_at = step
            return
        if agreed[0] != _NONE:
            what = (
                f"the train loss became NaN or Inf at global step {agreed[0]} "
                f"(epoch {(agreed[0] - 1) // self.steps_per_epoch})"
            )
        else:
            what = (
                f"the model's weights hold NaN or Inf by global step {self._base} (a gradient was NaN or "
                f"Inf while the loss was finite)"
            )
        good = dist.broadcast_object(self.last_good())  # rank 0 looks; every rank raises the same message
        saved = (
            f"nothing non-finite was saved: the newest good checkpoint, which a resume picks, is {good}"
            if good
            else "no checkpoint had been saved yet"
        )
        raise Diverged(
            f"training diverged: {what}; {saved}",
            "lower optim.lr, clip the gradients (optim.clip_grad_norm=1.0), or skip such steps "
            "with trainer.on_nonfinite=skip_step",
        )
