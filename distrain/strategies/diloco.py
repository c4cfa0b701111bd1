"""strategy: diloco. Replicas that train apart and meet every H steps: for links too slow for DDP.

    strategy: diloco
    diloco: {sync_every: 50, outer_lr: 0.7, outer_momentum: 0.9, wire_dtype: bfloat16}   # DiLoCo
    diloco: {sync_every: 50, outer_lr: 1.0, outer_momentum: 0.0}                         # local SGD
    diloco: {sync_every: 50, overlap_steps: 10, wire_dtype: bfloat16}     # the sync hidden behind 10 steps

Each rank trains its own copy of the model on its share of every global batch with the user's optimizer
(the inner one; its state stays on its rank), and nothing crosses the network. Every `sync_every` steps
(and at the end of every epoch, before evaluation), the ranks average their pseudo-gradients, how far each
moved from the weights of the last sync (the anchor), in one all-reduce; an outer optimizer (SGD with
Nesterov momentum: DiLoCo, Douillard et al. 2023) steps the anchor by that average; every replica starts
the next round from the new anchor. Local SGD is the outer step with lr 1 and no momentum: the anchor
becomes the replicas' average. With `overlap_steps: d` the all-reduce travels while the replicas train
on for d more steps; the outer step then lands d steps late, and each replica keeps the progress it made
meanwhile (its weights move by as much as the anchor moved).

What a replica computes between syncs is its own: its gradient is its share's mean loss (not the global
batch's), the loss of each step is its own, and its weights differ from the others' until the next sync.
Every checkpoint keeps, per rank, the replica's weights and inner optimizer state, the anchor and the
outer optimizer's momentum, so a kill at any step resumes bitwise on the same number of processes; a
checkpoint cannot be resumed on another number (refused by name: checkpoint.load=weights starts a new
run from its weights); a checkpoint of another strategy starts a new round from its weights. Each sample
is still read once per epoch: the data order is the run's, as with ddp.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from distrain.errors import ConfigError
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.strategies.base import Gradients, refuse_several
from distrain.strategies.comm import CommMeter
from distrain.strategies.native import NativeStrategy

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
        # A sync whose all-reduce is under way (diloco.overlap_steps): the sum (being reduced in place),
        # this replica's own pseudo-gradient, and the global step after which the outer step lands.
        self.pending: dict[str, Any] | None = None
        self.sizes: list[int] = []

    def setup(self, model: nn.Module) -> nn.Module:
        refuse_several(model, "strategy", "diloco")
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        # No DDP wrapper: nothing is exchanged inside backward. Every replica starts from rank 0's weights.
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast_tensor(tensor.data)
        self.model, self.optimizer = model, optimizer
        return self._compiled(model), optimizer

    def _params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _anchor_here(self) -> None:
        """The anchor and the outer optimizer over it, from the weights every replica holds now: made when
        first needed, so that a checkpoint's weights (loaded after prepare) are the first anchor."""
        if self.anchor is None:
            self.anchor = [nn.Parameter(p.detach().clone().float()) for p in self._params()]
            self.sizes = [a.numel() for a in self.anchor]
            self.outer = torch.optim.SGD(
                self.anchor,
                lr=self.cfg.outer_lr,
                momentum=self.cfg.outer_momentum,
                nesterov=self.cfg.outer_momentum > 0,
            )

    def gradients(self, model: nn.Module, batch: Any, objective: Any, global_step: int) -> Gradients:
        self._anchor_here()  # the weights every replica starts from (a checkpoint's, when one was loaded)
        return super().gradients(model, batch, objective, global_step)

    def after_step(self, model: nn.Module, global_step: int) -> None:
        self.local_steps += 1
        if self.pending is not None and global_step >= self.pending["apply_at"]:
            self._land()
        if global_step % self.cfg.sync_every == 0:
            self._send(apply_at=global_step + self.cfg.overlap_steps)
            if self.cfg.overlap_steps == 0:
                self._land()

    def sync(self, model: nn.Module) -> None:
        if self.pending is not None:
            self._land()
        if self.local_steps:
            self._send(apply_at=0)
            self._land()

    @torch.no_grad()
    def _send(self, apply_at: int) -> None:
        """The round ends: this replica's pseudo-gradient (anchor - replica) starts its all-reduce (in the
        wire dtype); the next round starts from here. Collective."""
        self._anchor_here()
        local = torch.cat([(a - p.float()).reshape(-1) for a, p in zip(self.anchor, self._params())])
        wire = local.to(self.wire_dtype, copy=True)  # reduced in place: `local` stays this replica's
        self.comm.bytes += wire.numel() * wire.element_size()
        self.pending = {"sum": wire, "local": local, "apply_at": apply_at, "work": dist.start_all_reduce_sum(wire)}
        self.local_steps = 0

    def _wait(self) -> None:
        work = self.pending.pop("work", None)
        if work is not None:
            started = time.perf_counter()
            work.wait()
            self.comm.wait_s += time.perf_counter() - started

    @torch.no_grad()
    def _land(self) -> None:
        """The all-reduce done: step the anchor by the average pseudo-gradient (the outer optimizer), and
        move every replica by as much as the anchor moved from where its round ended, keeping the inner
        steps taken while the sum travelled (none without overlap: the replica becomes the anchor)."""
        self._wait()
        params, pending = self._params(), self.pending
        average = pending["sum"].float() / self.ctx.world_size
        ended_at = [a - d.view_as(a) for a, d in zip(self.anchor, pending["local"].split(self.sizes))]
        for a, piece in zip(self.anchor, average.split(self.sizes)):
            a.grad = piece.view_as(a)
        self.outer.step()
        for a, p, end in zip(self.anchor, params, ended_at):
            a.grad = None
            if self.local_steps == 0:
                p.copy_(a)  # exactly the anchor
            else:
                p.add_(a - end)  # the anchor's move, on top of the steps taken since the round ended
        # Buffers (BatchNorm's running statistics) are averaged too, so that every replica evaluates alike.
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        if buffers and self.ctx.world_size > 1:
            flat = dist.all_reduce_sum(torch.cat([b.reshape(-1).float() for b in buffers])) / self.ctx.world_size
            for b, piece in zip(buffers, flat.split([b.numel() for b in buffers])):
                b.copy_(piece.view_as(b))
        self.pending = None

    def comm_figures(self) -> dict[str, float]:
        return self.comm.figures()

    def state_dict(self) -> dict[str, Any]:
        """This rank's replica (weights, buffers, inner optimizer state), the anchor and the outer optimizer."""
        self._anchor_here()
        if self.pending is not None:
            self._wait()  # a sum in flight is finished now (the same sum as later): it is saved as data
        return {
            "pending": None if self.pending is None else dict(self.pending),
            "replica": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "inner": self.optimizer.state_dict(),
            "anchor": [a.detach().clone() for a in self.anchor],
            "outer": self.outer.state_dict(),
            "local_steps": self.local_steps,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state == {}:  # no per-rank state saved (another strategy's checkpoint): its weights, a new round
            return
        if state is None:
            # Another world size: the checkpoint holds a replica (and inner optimizer state) per process
            # that wrote it, which does not map onto this number of processes.
            raise ConfigError(
                "strategy",
                "is 'diloco', whose checkpoints hold one replica per process: this one was written by another "
                "number of processes",
                "resume on that number of processes (or start a new run from its weights: checkpoint.load=weights)",
            )
        self.model.load_state_dict(state["replica"])
        self.optimizer.load_state_dict(state["inner"])
        self._anchor_here()
        with torch.no_grad():
            for a, saved in zip(self.anchor, state["anchor"]):
                a.copy_(saved)
        self.outer.load_state_dict(state["outer"])
        self.local_steps = state["local_steps"]
        self.pending = dict(state["pending"]) if state.get("pending") is not None else None
