"""strategy: ddp (the default). Every rank holds the whole model; torch's DistributedDataParallel averages
the gradients inside backward. torch.autocast and GradScaler for precision, nothing in between.

The step trains the wrapped model; checkpoints and evaluation use the unwrapped one, so a checkpoint loads
into a plain nn.Module with no "module." prefixes. In one process there is no wrapper at all. Several
models (a GAN) are each wrapped on their own: each averages its gradients in its own backward.
"""

from __future__ import annotations

from typing import Any, ContextManager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distrain.launch.dist import DistContext
from distrain.strategies.base import ModelSet
from distrain.strategies.native import NativeStrategy
from distrain.strategies.options import DDPConfig
from distrain.strategies.precision import NO_CONTEXT


def wrap_model(model: nn.Module, ctx: DistContext, cfg: DDPConfig) -> nn.Module:
    """DistributedDataParallel when there is more than one process, else the bare model."""
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # find_unused_parameters is off by default: it costs a graph traversal every step and every model
    # shipped here uses all its parameters; a model that does not gets DDP's own clear error naming it.
    return DistributedDataParallel(
        model,
        device_ids=device_ids,
        bucket_cap_mb=cfg.bucket_cap_mb,
        gradient_as_bucket_view=cfg.gradient_as_bucket_view,
        static_graph=cfg.static_graph,
        find_unused_parameters=cfg.find_unused_parameters,
    )


class DDPStrategy(NativeStrategy):
    checkpoint_format = "whole"  # rank 0 writes one .pt: every rank holds the same whole state

    def __init__(self, cfg: Any, ctx: DistContext):
        super().__init__(cfg, ctx)
        self.ddp_cfg, self.compile = cfg.ddp, cfg.trainer.compile
        self._wrapped: Any = None

    def setup(self, model: nn.Module) -> nn.Module:
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        if isinstance(model, ModelSet):  # several models: each its own DDP, called by name by the user's step
            self._wrapped = nn.ModuleDict({name: wrap_model(m, self.ctx, self.ddp_cfg) for name, m in model.items()})
            return self._wrapped, optimizer
        self._wrapped = wrap_model(model, self.ctx, self.ddp_cfg)
        if self.compile:
            # Compile the DDP wrapper, not the inner module: torch then splits the graph at DDP's buckets
            # so that gradient all-reduces still overlap the backward pass.
            self._wrapped = torch.compile(self._wrapped)
        return self._wrapped, optimizer

    def _sync(self, model: nn.Module, is_last: bool) -> ContextManager:
        # DDP all-reduces gradients inside backward. Under no_sync it only accumulates them locally, so
        # the micro-batches before the last add up without communication and the last one sends the sum
        # once (rather than one all-reduce per micro-batch). nanoGPT sets require_backward_grad_sync
        # instead; no_sync is the public form of the same switch.
        if is_last or not hasattr(model, "no_sync"):
            return NO_CONTEXT
        return model.no_sync()

    def release(self) -> None:
        self._wrapped = None
