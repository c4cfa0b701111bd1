"""The native engine: torch's DistributedDataParallel, torch.autocast and GradScaler, nothing in between."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from distrain.config.schema import Config, OptimConfig
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.loop.optim import clip_gradients
from distrain.strategies.ddp import wrap_model
from distrain.strategies.precision import build_precision


class NativeEngine:
    name = "native"

    def __init__(self, cfg: Config, ctx: DistContext):
        self.ctx, self.ddp_cfg, self.compile = ctx, cfg.ddp, cfg.trainer.compile
        self.sharded = cfg.strategy == "fsdp"  # the model was sharded in place (distrain.sharding)
        self.precision = build_precision(cfg.trainer.precision, ctx.device)
        self.scaler = self.precision.scaler
        self._wrapped: nn.Module | None = None

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        # FSDP2 hooks the sharded module itself: there is no wrapper, and no DDP on top of it.
        self._wrapped = model if self.sharded else wrap_model(model, self.ctx, self.ddp_cfg)
        if self.compile:
            # Compile the DDP wrapper, not the inner module: torch then splits the graph at DDP's buckets
            # so that gradient all-reduces still overlap the backward pass.
            self._wrapped = torch.compile(self._wrapped)
        return self._wrapped, optimizer

    def accumulate(self, model: nn.Module, is_last: bool) -> ContextManager:
        # DDP all-reduces gradients inside backward. Under no_sync it only accumulates them locally, so
        # the micro-batches before the last add up without communication and the last one sends the sum
        # once (rather than one all-reduce per micro-batch).
        # FSDP2 likewise skips the reduce-scatter of micro-batches until the last.
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(is_last)
            return contextlib.nullcontext()
        if is_last or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def autocast(self) -> ContextManager:
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: Any, model: nn.Module, cfg: OptimConfig) -> None:
        # Written out rather than delegated: this runs every step, and on small models each Python call
        # is a measurable share of the step (bench/).
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)  # clipping needs the true gradients
        if cfg.clip_grad_value is not None or cfg.clip_grad_norm is not None:
            clip_gradients(model, cfg)
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skips the step if the scaled gradients overflowed
            self.scaler.update()
        else:
            optimizer.step()

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return dist.all_reduce_sum(tensor)

    def release(self) -> None:
        self._wrapped = None
