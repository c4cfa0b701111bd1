"""`distrain export CHECKPOINT|RUN_DIR --out FILE`: the model's weights as one plain state dict, for
inference elsewhere: from a .pt checkpoint or a sharded one (its shards gathered in this process).

    model.load_state_dict(torch.load("model.pt", weights_only=True))     # the bare nn.Module, no distrain
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

FILE ending in .safetensors is written with safetensors; anything else with torch.save. Written
atomically: an interrupted export leaves no half-written file.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from distrain.atomic import atomic_write_bytes
from distrain.checkpoint.store import load_payload, resolve_checkpoint


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the model state dict of `checkpoint` (or of a run directory's newest complete one) to `out`."""
    source = resolve_checkpoint(checkpoint)  # checks a sharded checkpoint's manifest too
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in load_payload(source)["model"].items()}
    out = Path(out)
    if out.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(weights, metadata={"source": str(source)})
    else:
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        data = buffer.getvalue()
    atomic_write_bytes(out, data)
    return out
