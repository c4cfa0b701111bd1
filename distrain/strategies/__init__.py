"""How is the model spread over the ranks? A strategy owns everything that changes with that answer:
wrapping or sharding, gradient-sync control, precision, the checkpoint format and its config rules.

    strategy = build_strategy(cfg, ctx)          # ddp, fsdp, or DDP run by HF Accelerate (engine=accelerate)
    model = strategy.setup(model)                # before the optimizer: fsdp shards the parameters in place
    train_model, optimizer = strategy.prepare(model, optimizer)
    with strategy.sync_gradients(train_model, is_last):   # around each micro-batch's forward and backward
        with strategy.autocast():
            loss = ...
        strategy.backward(loss)
    strategy.step(optimizer, train_model, clip)  # unscale, clip, step
    totals = strategy.sum_over_ranks(totals)
    strategy.release()                           # before the process group goes

- ddp.py         DDPStrategy: torch's DistributedDataParallel, torch.autocast and GradScaler (native engine)
- fsdp.py        FSDPStrategy: FSDP2's fully_shard, sharded checkpoints
- accelerate.py  AccelerateStrategy: DDP through HF Accelerate's Accelerator (engine=accelerate)
- exact.py       ExactStrategy: trainer.exact, DDP's data parallelism with a fixed-point gradient sum
- options.py     the ddp and fsdp config sections and the rules a strategy sets for the others (no torch)
- precision.py   bf16/fp16 autocast and the gradient scaler

The trainer never asks which strategy it runs. This package's __init__ imports nothing, so the config
(which reads options.py) stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distrain.config.schema import Config
    from distrain.launch.dist import DistContext
    from distrain.strategies.base import Strategy


def build_strategy(cfg: Config, ctx: DistContext) -> Strategy:
    """The strategy the config asks for: engine=accelerate runs DDP through Accelerate; else strategy ddp|fsdp."""
    if cfg.engine == "accelerate":
        from distrain.strategies.accelerate import AccelerateStrategy  # imported only when asked for

        return AccelerateStrategy(cfg, ctx)
    if cfg.strategy == "fsdp":
        from distrain.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(cfg, ctx)
    if cfg.trainer.exact:
        from distrain.strategies.exact import ExactStrategy

        return ExactStrategy(cfg, ctx)
    from distrain.strategies.ddp import DDPStrategy

    return DDPStrategy(cfg, ctx)
