"""What is minimised and what counts as correct: per-sample losses and per-sample hits.

Per-sample values (reduction="none") let the meters sum losses exactly; `step_loss` is the loss a
training step differentiates, weighted for the *global* batch (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Objective:
    binary: bool  # one logit + BCE-with-logits, else one logit per class + cross-entropy

    def losses(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), targets.to(logits.dtype),
                                                      reduction=reduction)
        return F.cross_entropy(logits, targets, reduction=reduction)

    def step_loss(self, logits: torch.Tensor, targets: torch.Tensor, world_size: int, global_size: int,
                  average: bool = True) -> tuple[torch.Tensor, float]:
        """The loss whose gradient, averaged over the ranks by DDP, is that of the global batch's mean loss,
        and the weight that turns it back into the sum of these samples' losses (for the metrics).

        Weighted by the *global* batch size, not the local one: sum_local * world / global averages to the
        global mean even when the last batch splits unevenly (a local mean would over-weight the smaller
        shares), and micro-batch sums simply add up. When this rank holds exactly its even share (every
        step but an uneven last one) that is the local mean, computed in one kernel.
        """
        if average and len(targets) * world_size == global_size:
            return self.losses(logits, targets, "mean"), float(len(targets))
        return self.losses(logits, targets, "sum") * (world_size / global_size), global_size / world_size

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """1 where the prediction equals the target, else 0."""
        predictions = (logits.squeeze(-1) > 0).long() if self.binary else logits.argmax(dim=-1)
        return (predictions == targets).long()


def build_objective(num_classes: int) -> Objective:
    return Objective(binary=num_classes == 2)
