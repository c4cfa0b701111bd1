"""`distrain eval CONFIG checkpoint=PATH`: val and test metrics of a checkpoint, on any number of ranks.

    distrain eval configs/xor.yaml checkpoint=runs/xor/checkpoints/step-00002000.pt
    distrain eval configs/xor.yaml checkpoint=runs/xor          # a run directory: its newest checkpoint
    torchrun --standalone --nproc_per_node=2 -m distrain eval configs/xor.yaml checkpoint=...

Rank 0 prints one JSON line: {"checkpoint": ..., "test_loss": ..., "test_accuracy": ..., "test_samples": ...}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from distrain.checkpoint.store import load_model_weights, load_payload, resolve_checkpoint
from distrain.config.schema import Config
from distrain.launch.env import detect
from distrain.loop.components import Given, build_parts, joined
from distrain.loop.steps import evaluate_splits


def evaluate_checkpoint(
    cfg: Config, path: str, environ: Mapping[str, str] = os.environ, given: Given | None = None
) -> dict[str, Any]:
    # No global-batch check here: evaluation uses fixed eval batches, whatever the number of ranks.
    env = detect(environ)
    checkpoint = resolve_checkpoint(path)
    with joined(cfg, env) as ctx:
        parts = build_parts(cfg, ctx, given)
        payload = load_payload(checkpoint, map_location=ctx.device)
        load_model_weights(parts.model, payload, checkpoint)
        splits = evaluate_splits(parts, ctx)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "epoch": payload["epoch"],
        "global_step": payload["global_step"],
    }
    for split, m in splits.items():
        result.update({f"{split}_{name}": value for name, value in m.values.items()}, **{f"{split}_samples": m.samples})
    if env.is_main:
        print(json.dumps(result), flush=True)
    return result
