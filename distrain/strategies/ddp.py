"""strategy: ddp (the default). Every rank holds the whole model; torch's DistributedDataParallel averages
the gradients inside backward. torch.autocast and GradScaler for precision, nothing in between.

The step trains the wrapped model; checkpoints and evaluation use the unwrapped one, so a checkpoint loads
into a plain nn.Module with no "module." prefixes. In one process there is no wrapper at all. Several
models (a GAN) are each wrapped on their own: each averages its gradients in its own backward.
"""

from __future__ import annotations

import logging
from typing import Any, ContextManager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distrain.data.structures import split
from distrain.errors import ConfigError
from distrain.launch.dist import DistContext
from distrain.strategies.base import Gradients, ModelSet
from distrain.strategies.comm import CommHook, CommMeter, build_comm_hook
from distrain.strategies.native import NativeStrategy
from distrain.strategies.options import DDPConfig
from distrain.strategies.precision import NO_CONTEXT

log = logging.getLogger("distrain")


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
        self.ddp_cfg = cfg.ddp
        self._wrapped: Any = None
        self.comm = CommMeter()
        self.hook: CommHook | None = None  # ddp.comm_hook, registered on the DDP wrapper
        self._gradient_bytes = 0  # what DDP's own all-reduce sends a step (float32 gradients)
        self._settled = False  # powersgd: the buckets' layout settled before the hook is registered

    def setup(self, model: nn.Module) -> nn.Module:
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        if isinstance(model, ModelSet):  # several models: each its own DDP, called by name by the user's step
            if self.ddp_cfg.comm_hook != "none":
                raise ConfigError(
                    "ddp.comm_hook",
                    "is not applied to several models (their step does backward itself)",
                    "set ddp.comm_hook=none",
                )
            self._wrapped = nn.ModuleDict({name: wrap_model(m, self.ctx, self.ddp_cfg) for name, m in model.items()})
            return self._wrapped, optimizer
        self._wrapped = wrap_model(model, self.ctx, self.ddp_cfg)
        if self._wrapped is not model:
            self.hook = build_comm_hook(self.ddp_cfg, self.comm)
            if self.hook is not None and not self.hook.needs_settled_buckets:
                self._wrapped.register_comm_hook(self.hook.state, self.hook.registered(model))
            elif self.hook is None:
                self._gradient_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        elif self.ddp_cfg.comm_hook != "none":
            log.info("ddp.comm_hook=%s: one process has no all-reduce to compress", self.ddp_cfg.comm_hook)
        # Compile the DDP wrapper, not the inner module: torch then splits the graph at DDP's buckets so
        # that gradient all-reduces still overlap the backward pass.
        self._wrapped = self._compiled(self._wrapped)
        return self._wrapped, optimizer

    def _sync(self, model: nn.Module, is_last: bool) -> ContextManager:
        # DDP all-reduces gradients inside backward. Under no_sync it only accumulates them locally, so
        # the micro-batches before the last add up without communication and the last one sends the sum
        # once (rather than one all-reduce per micro-batch). nanoGPT sets require_backward_grad_sync
        # instead; no_sync is the public form of the same switch.
        if is_last or not hasattr(model, "no_sync"):
            return NO_CONTEXT
        return model.no_sync()

    def _settle_buckets(self, model: nn.Module, batch: Any, objective: Any) -> None:
        """PowerSGD multiplies each gradient matrix in place inside DDP's bucket, and a CPU matmul's rounding
        depends on where in memory the matrix starts. DDP lays its buckets out anew after the first backward
        of every process (in the order gradients became ready): a resumed process would take its first step
        with the matrices elsewhere than the uninterrupted run does. So each process first runs one
        discarded backward (eval mode: no dropout draw, no BatchNorm update; DDP's own all-reduce), which
        settles the layout, and registers the hook after it: every real step then has the same layout."""
        inputs, targets = batch.inputs, batch.targets
        if self.micro_batches > 1:  # no more memory than a step's micro-batch
            inputs, targets = split(inputs, self.micro_batches)[0], split(targets, self.micro_batches)[0]
        was_training = model.training
        model.eval()
        devices = [self.ctx.device.index or 0] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # a forward that draws (a VAE's noise) leaves no trace
            with self.precision.autocast():
                loss, _ = objective.forward_loss(model, inputs, targets, self.ctx.world_size, batch.global_size)
            loss.backward()
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
        self._wrapped.register_comm_hook(self.hook.state, self.hook.registered(model.module))
        self._settled = True

    def _backward(self, loss: torch.Tensor) -> None:
        super()._backward(loss)
        if self.hook is not None:
            self.hook.backward_done()

    def gradients(self, model: nn.Module, batch: Any, objective: Any, global_step: int) -> Gradients:
        if self.hook is not None and self.hook.needs_settled_buckets and not self._settled:
            self._settle_buckets(model, batch, objective)
        grads = super().gradients(model, batch, objective, global_step)
        self.comm.bytes += self._gradient_bytes  # DDP's own all-reduce (a hook counts its own)
        return grads

    def comm_figures(self) -> dict[str, float]:
        # One process exchanges nothing; several models' own DDPs are not measured.
        single = self._wrapped is not None and self.ctx.world_size > 1 and not isinstance(self._wrapped, nn.ModuleDict)
        return self.comm.figures() if single else {}

    def state_dict(self) -> dict[str, Any]:
        return self.hook.state_dict() if self.hook is not None else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.hook is not None and not self.hook.load_state_dict(state):
            log.warning(
                "ddp.comm_hook=%s starts afresh: the checkpoint holds no state of it for this rank (another "
                "world size, or another hook): error feedback restarts from zero",
                self.hook.name,
            )

    def release(self) -> None:
        self._wrapped = self.hook = None
