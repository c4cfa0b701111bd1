"""What is minimised and what counts as correct: per-sample losses and per-sample hits.

Per-sample values (reduction="none") let the loops weight a rank's share by the *global* batch size and
sum evaluation losses exactly; see distrain.loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Objective:
    binary: bool  # one logit + BCE-with-logits, else one logit per class + cross-entropy

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), targets.to(logits.dtype), reduction="none")
        return F.cross_entropy(logits, targets, reduction="none")

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """1 where the prediction equals the target, else 0."""
        predictions = (logits.squeeze(-1) > 0).long() if self.binary else logits.argmax(dim=-1)
        return (predictions == targets).long()


def build_objective(num_classes: int) -> Objective:
    return Objective(binary=num_classes == 2)
