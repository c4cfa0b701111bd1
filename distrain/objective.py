"""What is minimised and what counts as correct: per-sample losses and per-sample hits.

Per-sample values (reduction="none") let the meters sum losses exactly; `step_loss` is the loss a
training step differentiates, weighted for the *global* batch (see its docstring). Targets reach these
functions as `prepare_targets` made them (the batch sources apply it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Objective:
    binary: bool  # one logit + BCE-with-logits, else one logit per class + cross-entropy

    def prepare_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Class labels as the loss takes them: class indices for cross-entropy; for BCE, float 0/1 shaped
        [N, 1] like the one-logit output. Done once per in-memory data set (per batch for a DataLoader),
        it spares every step a squeeze and a cast and their backward: ~7% of the XOR step (bench/parts.py)."""
        if self.binary:
            return targets.to(torch.float32).unsqueeze(-1)
        return targets

    def losses(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)
        return F.cross_entropy(logits, targets, reduction=reduction)

    def step_loss(self, logits: torch.Tensor, targets: torch.Tensor, world_size: int, global_size: int,
                  average: bool = True) -> torch.Tensor:
        """The loss whose gradient, averaged over the ranks by DDP, is that of the global batch's mean loss.

        Weighted by the *global* batch size, not the local one: sum_local * world / global averages to the
        global mean even when the last batch splits unevenly (a local mean would over-weight the smaller
        shares), and micro-batch sums simply add up. When this rank holds exactly its even share (every
        step but an uneven last one) that is the local mean, computed in one kernel.
        """
        if average and len(targets) * world_size == global_size:
            return self.losses(logits, targets, "mean")
        return self.losses(logits, targets, "sum") * (world_size / global_size)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """1 where the prediction equals the target, else 0."""
        if self.binary:
            return ((logits > 0) == targets.bool()).long()
        return (logits.argmax(dim=-1) == targets).long()


def build_objective(num_classes: int) -> Objective:
    return Objective(binary=num_classes == 2)
