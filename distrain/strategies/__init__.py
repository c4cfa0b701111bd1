"""Engines: who wraps the model, runs backward and steps the optimizer. The loops are the same for both.

    engine = build_engine(cfg, ctx)              # cfg.engine: "native" (default) or "accelerate"
    model, optimizer = engine.prepare(model, optimizer)
    with engine.accumulate(model, is_last):      # around forward and backward of a micro-batch
        with engine.autocast():
            loss = ...
        engine.backward(loss)
    engine.step(optimizer, model, cfg.optim)     # unscale, clip, step
    totals = engine.sum_over_ranks(totals)

- native (distrain.engines.native): torch's DistributedDataParallel, torch.autocast and GradScaler.
- accelerate (distrain.engines.accelerate): HF Accelerate's Accelerator, for users who keep its launcher,
  its config file and its plugins.

Both run in the process group that distrain.dist creates, on the batches that distrain.data shards, and
save the same checkpoint format (distrain.state), so a checkpoint of one engine resumes in the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distrain.strategies.base import Engine

if TYPE_CHECKING:
    from distrain.config.schema import Config
    from distrain.launch.dist import DistContext

__all__ = ["Engine", "build_engine"]


def build_engine(cfg: "Config", ctx: "DistContext") -> Engine:
    if cfg.engine == "accelerate":
        from distrain.strategies.accelerate import AccelerateEngine

        return AccelerateEngine(cfg, ctx)
    from distrain.strategies.native import NativeEngine

    return NativeEngine(cfg, ctx)
