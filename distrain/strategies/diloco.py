"""strategy: diloco. Replicas that train apart and meet every H steps: for links too slow for DDP.

    strategy: diloco
    diloco: {sync_every: 50, outer_lr: 0.7, outer_momentum: 0.9, wire_dtype: bfloat16}   # DiLoCo
    diloco: {sync_every: 50, outer_lr: 1.0, outer_momentum: 0.0}                         # local SGD

Each rank trains its own copy of the model on its share of every global batch with the user's optimizer
(the inner one; its state stays on its rank), and nothing crosses the network. Every `sync_every` steps
(and at the end of every epoch, before evaluation), the ranks average their pseudo-gradients, how far each
moved from the weights of the last sync (the anchor), in one all-reduce; an outer optimizer (SGD with
Nesterov momentum: DiLoCo, Douillard et al. 2023) steps the anchor by that average; every replica starts
the next round from the new anchor. Local SGD is the outer step with lr 1 and no momentum: the anchor
becomes the replicas' average.

What a replica computes between syncs is its own: its gradient is its share's mean loss (not the global
batch's), the loss of each step is its own, and its weights differ from the others' until the next sync.
Every checkpoint keeps, per rank, the replica's weights and inner optimizer state, the anchor and the
outer optimizer's momentum, so a kill at any step resumes bitwise on the same number of processes; a
checkpoint taken mid-round cannot be resumed on another number (refused by name). Each sample is still
read once per epoch: the data order is the run's, as with ddp.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ContextManager

import torch
from torch import nn

from distrain.errors import ConfigError
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.strategies.base import Gradients, refuse_several
from distrain.strategies.comm import CommMeter
from distrain.strategies.native import NativeStrategy
from distrain.strategies.precision import NO_CONTEXT

log = logging.getLogger("distrain")


class DiLoCoStrategy(NativeStrategy):
    checkpoint_format = "whole"  # rank 0's replica in the .pt; every replica's in the strategy's state

    def __init__(self, cfg: Any, ctx: DistContext):
        super().__init__(cfg, ctx)
        self.cfg = cfg.diloco
        self.wire_dtype = getattr(torch, self.cfg.wire_dtype)
        self.comm = CommMeter()
        self.comm.waits = True
        self.model: nn.Module | None = None
        self.optimizer: Any = None  # the inner optimizer (its state is per rank)
        self.anchor: list[torch.Tensor] | None = None  # the weights of the last sync
        self.outer: torch.optim.SGD | None = None
        self.local_steps = 0  # inner steps since the last sync

    def setup(self, model: nn.Module) -> nn.Module:
        refuse_several(model, "strategy", "diloco")
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        # No DDP wrapper: nothing is exchanged inside backward. Every replica starts from rank 0's weights.
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast_tensor(tensor.data)
        self.model, self.optimizer = model, optimizer
        return model, optimizer

    def _params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _anchor_here(self) -> None:
        """The anchor and the outer optimizer over it, from the weights every replica holds now: made when
        first needed, so that a checkpoint's weights (loaded after prepare) are the first anchor."""
        if self.anchor is None:
            self.anchor = [nn.Parameter(p.detach().clone().float()) for p in self._params()]
            self.outer = torch.optim.SGD(
                self.anchor,
                lr=self.cfg.outer_lr,
                momentum=self.cfg.outer_momentum,
                nesterov=self.cfg.outer_momentum > 0,
            )

    def gradients(self, model: nn.Module, batch: Any, objective: Any, global_step: int) -> Gradients:
        self._anchor_here()
        return super().gradients(model, batch, objective, global_step)

    def _sync(self, model: nn.Module, is_last: bool) -> ContextManager:
        return NO_CONTEXT  # each replica's gradients stay its own

    def after_step(self, model: nn.Module, global_step: int) -> None:
        self.local_steps += 1
        if global_step % self.cfg.sync_every == 0:
            self._outer_step()

    def sync(self, model: nn.Module) -> None:
        if self.local_steps:
            self._outer_step()

    @torch.no_grad()
    def _outer_step(self) -> None:
        """Average the pseudo-gradients (anchor - replica) over the ranks, step the anchor by the outer
        optimizer, and start every replica from it. Collective: one all-reduce of the model's size."""
        params = self._params()
        flat = torch.cat([(a - p.float()).reshape(-1) for a, p in zip(self.anchor, params)])
        wire = flat.to(self.wire_dtype)
        started = time.perf_counter()
        dist.all_reduce_sum(wire)
        self.comm.wait_s += time.perf_counter() - started
        self.comm.bytes += wire.numel() * wire.element_size()
        average = wire.float() / self.ctx.world_size
        for a, piece in zip(self.anchor, average.split([a.numel() for a in self.anchor])):
            a.grad = piece.view_as(a)
        self.outer.step()
        for a, p in zip(self.anchor, params):
            a.grad = None
            p.copy_(a)
        # Buffers (BatchNorm's running statistics) are averaged too, so that every replica evaluates alike.
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        if buffers and self.ctx.world_size > 1:
            flat = dist.all_reduce_sum(torch.cat([b.reshape(-1).float() for b in buffers])) / self.ctx.world_size
            for b, piece in zip(buffers, flat.split([b.numel() for b in buffers])):
                b.copy_(piece.view_as(b))
        self.local_steps = 0

    def comm_figures(self) -> dict[str, float]:
        return self.comm.figures()

    def state_dict(self) -> dict[str, Any]:
        """This rank's replica (weights, buffers, inner optimizer state), the anchor and the outer optimizer."""
        self._anchor_here()
        return {
            "replica": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "inner": self.optimizer.state_dict(),
            "anchor": [a.detach().clone() for a in self.anchor],
            "outer": self.outer.state_dict(),
            "local_steps": self.local_steps,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state == {}:  # written by another strategy (ddp, exact): its weights are every rank's, a new round
            return
        if state is None:
            # Another world size (or no state): the checkpoint's weights are rank 0's replica. At a sync
            # they are every replica's and the run can go on; mid-round the others' progress is not there.
            raise ConfigError(
                "strategy",
                "is 'diloco', whose replicas train apart between syncs: this checkpoint holds each process's "
                "replica for the number of processes that wrote it",
                "resume on that number of processes (a new run from its weights: checkpoint.load=weights)",
            )
        self.model.load_state_dict(state["replica"])
        self.optimizer.load_state_dict(state["inner"])
        self._anchor_here()
        with torch.no_grad():
            for a, saved in zip(self.anchor, state["anchor"]):
                a.copy_(saved)
        self.outer.load_state_dict(state["outer"])
        self.local_steps = state["local_steps"]
