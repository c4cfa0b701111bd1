"""Mixed precision: bf16 autocast on CPU and GPU, fp16 autocast with a gradient scaler on GPU.

    amp = build_precision("bf16", device)
    with amp.autocast():
        loss = ...
    amp.backward(loss); amp.unscale(optimizer); clip; amp.step(optimizer)

The parameters, optimizer state and checkpoints stay in float32; only the forward pass runs in the lower
precision. fp16 needs the scaler (its range underflows small gradients); bf16 has float32's range and
needs none. The scaler's state is part of every checkpoint (see distrain.state).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from distrain.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    name: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        if self.name == "32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.name])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)  # skips the step if the scaled gradients overflowed
            self.scaler.update()
        else:
            optimizer.step()


def build_precision(name: str, device: torch.device) -> Precision:
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("trainer.precision", "fp16 needs a CUDA device (its gradient scaler is CUDA-only here)",
                              "use trainer.precision=bf16 on CPU")
        return Precision(name, device, torch.amp.GradScaler("cuda"))
    return Precision(name, device)
