"""`distrain eval CONFIG checkpoint=PATH`: test-set loss and accuracy of a checkpoint, on any number of ranks.

    distrain eval configs/xor.yaml checkpoint=runs/xor/checkpoints/step-00002000.pt
    torchrun --standalone --nproc_per_node=2 -m distrain eval configs/xor.yaml checkpoint=...

Rank 0 prints one JSON line: {"checkpoint": ..., "test_loss": ..., "test_accuracy": ..., "samples": ...}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from distrain.checkpoint import load_payload
from distrain.config import Config
from distrain.dist import distributed
from distrain.env import detect
from distrain.loops import evaluate
from distrain.train import build_parts, setup_logging


def evaluate_checkpoint(cfg: Config, path: str, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    # No global-batch check here: evaluation uses fixed eval batches, whatever the number of ranks.
    env = detect(environ)
    setup_logging(env.rank)
    with distributed(env, backend=cfg.dist.backend, timeout_s=cfg.dist.timeout_s,
                     device=cfg.trainer.device) as ctx:
        parts = build_parts(cfg, ctx)
        payload = load_payload(path, map_location=ctx.device)
        parts.model.load_state_dict(payload["model"])
        metrics = evaluate(parts.model, parts.test_batches, parts.objective, ctx.device)
    result = {"checkpoint": str(path), "epoch": payload["epoch"], "global_step": payload["global_step"],
              "test_loss": metrics.loss, "test_accuracy": metrics.accuracy, "samples": metrics.samples}
    if env.is_main:
        print(json.dumps(result), flush=True)
    return result
