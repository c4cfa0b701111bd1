"""Mixed precision: bf16 autocast on CPU and GPU, fp16 autocast with a gradient scaler on GPU and CPU.

    amp = build_precision("bf16", device)
    with amp.autocast():
        loss = ...
    # amp.scaler (fp16 only) scales the loss, unscales before clipping and steps: distrain.strategies.ddp.DDPStrategy

The parameters, optimizer state and checkpoints stay in float32; only the forward pass runs in the lower
precision. fp16 needs the scaler (its range underflows small gradients); bf16 has float32's range and
needs none. The scaler's state is part of every checkpoint (see distrain.loop.state).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from distrain.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# One reusable empty context, for every "nothing to do around this" of a step (no autocast, no gradient-sync
# switch): saves building a context per step.
NO_CONTEXT = contextlib.nullcontext()


@dataclass
class Precision:
    name: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        if self.name == "32":
            return NO_CONTEXT
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.name])


def check_precision(name: str, device: torch.device, engine: str = "native") -> None:
    """Refuse a precision the device cannot train in (both engines ask this first). fp16 on the CPU: torch's
    CPU autocast and GradScaler("cpu") do it (slowly: it is there to run fp16's code paths, exact mode's
    included, where there is no GPU); Accelerate refuses fp16 without a GPU."""
    if name == "fp16" and device.type != "cuda" and (engine != "native" or device.type != "cpu"):
        raise ConfigError(
            "trainer.precision",
            f"fp16 needs a CUDA device with engine {engine} (this run is on {device.type})",
            "use trainer.precision=bf16" + (", or engine=native" if engine != "native" else ""),
        )


def build_precision(name: str, device: torch.device) -> Precision:
    check_precision(name, device)
    return Precision(name, device, torch.amp.GradScaler(device.type) if name == "fp16" else None)
