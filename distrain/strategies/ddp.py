"""strategy: ddp (the default). Every rank holds the whole model; torch's DistributedDataParallel averages
the gradients inside backward. torch.autocast and GradScaler for precision, nothing in between.

The step trains the wrapped model; checkpoints and evaluation use the unwrapped one, so a checkpoint loads
into a plain nn.Module with no "module." prefixes. In one process there is no wrapper at all.
"""

from __future__ import annotations

from typing import Any, ContextManager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distrain.config.schema import Config, OptimConfig
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.strategies.options import DDPConfig
from distrain.strategies.precision import NO_CONTEXT, build_precision


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


def clip_gradients(model: nn.Module, clip: OptimConfig) -> None:
    """Clip after backward, when the gradients are already averaged: every rank clips the same values."""
    if clip.clip_grad_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), clip.clip_grad_value)
    if clip.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip.clip_grad_norm)


class DDPStrategy:
    engine = "native"
    sharded = False  # rank 0 writes one .pt: every rank holds the same whole state
    replaces_parameters = False

    def __init__(self, cfg: Config, ctx: DistContext):
        self.ctx, self.ddp_cfg, self.compile = ctx, cfg.ddp, cfg.trainer.compile
        self.precision = build_precision(cfg.trainer.precision, ctx.device)
        self.scaler = self.precision.scaler
        self._wrapped: nn.Module | None = None

    def setup(self, model: nn.Module) -> nn.Module:
        return model

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        self._wrapped = self._wrap(model)
        if self.compile:
            # Compile the DDP wrapper, not the inner module: torch then splits the graph at DDP's buckets
            # so that gradient all-reduces still overlap the backward pass.
            self._wrapped = torch.compile(self._wrapped)
        return self._wrapped, optimizer

    def _wrap(self, model: nn.Module) -> nn.Module:
        return wrap_model(model, self.ctx, self.ddp_cfg)

    def sync_gradients(self, model: nn.Module, is_last: bool) -> ContextManager:
        # DDP all-reduces gradients inside backward. Under no_sync it only accumulates them locally, so
        # the micro-batches before the last add up without communication and the last one sends the sum
        # once (rather than one all-reduce per micro-batch). nanoGPT sets require_backward_grad_sync
        # instead; no_sync is the public form of the same switch.
        if is_last or not hasattr(model, "no_sync"):
            return NO_CONTEXT
        return model.no_sync()

    def autocast(self) -> ContextManager:
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: Any, model: nn.Module, clip: OptimConfig) -> None:
        # Written out rather than delegated: this runs every step, and on small models each Python call
        # is a measurable share of the step (bench/).
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)  # clipping needs the true gradients
        if clip.clip_grad_value is not None or clip.clip_grad_norm is not None:
            clip_gradients(model, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skips the step if the scaled gradients overflowed
            self.scaler.update()
        else:
            optimizer.step()

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return dist.all_reduce_sum(tensor)

    def release(self) -> None:
        self._wrapped = None
