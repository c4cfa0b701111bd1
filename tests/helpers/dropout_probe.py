"""A model with dropout that writes its first training mask to $PROBE_DIR/mask-<RANK>.pt: what each rank's
random stream draws (tests/test_exact.py). By import path: model.name=helpers.dropout_probe:DropoutNet."""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class DropoutNet(nn.Module):
    def __init__(self, num_inputs: int, num_outputs: int):
        super().__init__()
        self.hidden, self.out = nn.Linear(num_inputs, 16), nn.Linear(16, num_outputs)
        self.recorded = False

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        mask = F.dropout(torch.ones_like(h), 0.5, self.training)  # drawn as nn.Dropout draws
        if self.training and not self.recorded:
            torch.save(mask, Path(os.environ["PROBE_DIR"]) / f"mask-{os.environ.get('RANK', '0')}.pt")
            self.recorded = True
        return self.out(h * mask)
