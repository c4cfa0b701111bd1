"""How is the model spread over the ranks, and how do its gradients become one? A strategy owns
everything that changes with that answer: wrapping or sharding, how a step's micro-batches (or chunks)
become gradients and how they are exchanged, precision, the checkpoint format and its config rules.

    strategy = build_strategy(cfg, ctx, lanes)   # ddp, fsdp (exact or not), exact, or DDP run by HF Accelerate
    model = strategy.setup(model)                # before the optimizer: fsdp shards the parameters in place
    train_model, optimizer = strategy.prepare(model, optimizer)
    grads = strategy.gradients(train_model, batch, objective, global_step)   # forward, backward, exchange
    strategy.step(optimizer, train_model, clip)  # unscale, clip, step
    strategy.after_step(train_model, global_step + 1)
    totals = strategy.sum_over_ranks(totals)
    strategy.release()                           # before the process group goes

- base.py        the Strategy protocol (the seam), Gradients, ModelSet (several models)
- native.py      the native engine's micro-batch loop and optimizer step, shared by ddp, fsdp and exact
- ddp.py         DDPStrategy: torch's DistributedDataParallel, torch.autocast and GradScaler
- fsdp.py        FSDPStrategy: FSDP2's fully_shard, sharded checkpoints
- exact.py       ExactStrategy: strategy exact (trainer.exact), chunked steps, BatchNorm's replay
- exact_sum.py   ExactSum, SmallExactSum: exact mode's order-free gradient sum (two layouts, the same bits)
- exact_fsdp.py  ExactFSDPStrategy: strategy fsdp with trainer.exact, exact.py's sum over a sharded model
- diloco.py      DiLoCoStrategy: replicas that train apart and average every H steps (DiLoCo, local SGD)
- comm.py        DDP's communication hooks (ddp.comm_hook: fp16, bf16, powersgd) and the comm figures
- accelerate.py  AccelerateStrategy: DDP through HF Accelerate's Accelerator (engine=accelerate)
- options.py     the ddp and fsdp config sections and the rules a strategy sets for the others (no torch)
- precision.py   bf16/fp16 autocast and the gradient scaler

The trainer never asks which strategy it runs. This package's __init__ imports options.py alone (no torch),
so the config (which reads options.py) stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distrain.strategies.options import is_exact

if TYPE_CHECKING:
    from distrain.config.schema import Config
    from distrain.launch.dist import DistContext
    from distrain.strategies.base import Strategy


def build_strategy(cfg: Config, ctx: DistContext, lanes: int | None = None) -> Strategy:
    """The strategy the config asks for: engine=accelerate runs DDP through Accelerate; else strategy
    ddp|fsdp|exact|diloco (trainer.exact: true is exact). `lanes`: a sharded stream's lanes (exact mode's chunks)."""
    if cfg.engine == "accelerate":
        from distrain.strategies.accelerate import AccelerateStrategy  # imported only when asked for

        return AccelerateStrategy(cfg, ctx)
    if cfg.strategy == "fsdp" and is_exact(cfg):  # trainer.exact: exact mode's sum over a sharded model
        from distrain.strategies.exact_fsdp import ExactFSDPStrategy

        return ExactFSDPStrategy(cfg, ctx)
    if cfg.strategy == "fsdp":
        from distrain.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(cfg, ctx)
    if is_exact(cfg):
        from distrain.strategies.exact import ExactStrategy

        return ExactStrategy(cfg, ctx, lanes)
    if cfg.strategy == "diloco":
        from distrain.strategies.diloco import DiLoCoStrategy

        return DiLoCoStrategy(cfg, ctx)
    from distrain.strategies.ddp import DDPStrategy

    return DDPStrategy(cfg, ctx)
