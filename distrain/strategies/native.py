"""The native engine's step, shared by the strategies that run it (ddp, fsdp, exact): the micro-batch
loop of one step's gradients, and the optimizer step (unscale, clip, step). `NativeStrategy` runs both;
each strategy overrides only what it changes (how a micro-batch's gradients sync, how they are summed).

    grads = micro_batch_gradients(model, batch, objective, world_size=W, micro_batches=M,
                                  sync=..., autocast=..., backward=...)
    native_step(optimizer, model, clip, scaler)
"""

from __future__ import annotations

import time
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from distrain.data.structures import split
from distrain.launch.dist import DistContext
from distrain.launch.stragglers import TIMES
from distrain.strategies.base import Gradients, StrategyDefaults
from distrain.strategies.precision import NO_CONTEXT, build_precision


def micro_batch_gradients(
    model: nn.Module,
    batch: Any,
    objective: Any,
    *,
    world_size: int,
    micro_batches: int,
    sync: Callable[[nn.Module, bool], ContextManager],
    autocast: Callable[[], ContextManager],
    backward: Callable[[torch.Tensor], None],
) -> Gradients:
    """This rank's share of one global batch as `micro_batches` micro-batches whose gradients add up to
    the same total (one micro-batch: no accumulation, the same path). `sync(model, is_last)`: the context
    in which a micro-batch's backward runs (the strategy's gradient exchange happens on the last only).
    Collective where backward exchanges gradients."""
    pieces = (
        ((batch.inputs, batch.targets),)
        if micro_batches == 1
        else tuple(zip(split(batch.inputs, micro_batches), split(batch.targets, micro_batches)))
    )
    records, step_loss = [], None
    for index, (inputs, targets) in enumerate(pieces):
        with sync(model, index == micro_batches - 1):
            started = time.perf_counter()  # the forward's time: a straggler shows here (launch/stragglers.py)
            with autocast():
                # One micro-batch: its weighted mean (one kernel). Several: weighted sums, whose gradients
                # add up to the step's. (A user's step= answers here: loop/user_step.py.)
                loss, record = objective.forward_loss(
                    model, inputs, targets, world_size, batch.global_size, average=micro_batches == 1
                )
            TIMES[1] += time.perf_counter() - started
            backward(loss)
        records.append(record)
        step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
    return Gradients(step_loss, records)


def clip_gradients(model: nn.Module, clip: Any) -> None:
    """Clip after the exchange, when the gradients are the same on every rank: every rank clips alike."""
    if clip.clip_grad_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), clip.clip_grad_value)
    if clip.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip.clip_grad_norm)


def native_step(optimizer: Any, model: nn.Module, clip: Any, scaler: Any) -> None:
    """Unscale (fp16), clip as optim.clip_grad_norm / clip_grad_value say (`clip`: the optim section, None
    when fit was given the optimizer), step the optimizer.

    Written out rather than delegated: this runs every step, and on small models each Python call is a
    measurable share of the step (bench/)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clipping needs the true gradients
    if clip is not None and (clip.clip_grad_value is not None or clip.clip_grad_norm is not None):
        clip_gradients(model, clip)
    if scaler is not None:
        scaler.step(optimizer)  # skips the step if the scaled gradients overflowed
        scaler.update()
    else:
        optimizer.step()


class MicroBatched(StrategyDefaults):
    """`gradients` as micro_batch_gradients, from what a subclass sets: `world_size`, `micro_batches`,
    `_sync` (the context of a micro-batch's backward), `_autocast` and `_backward`."""

    world_size: int
    micro_batches: int

    def gradients(self, model: nn.Module, batch: Any, objective: Any, global_step: int) -> Gradients:
        return micro_batch_gradients(
            model,
            batch,
            objective,
            world_size=self.world_size,
            micro_batches=self.micro_batches,
            sync=self._sync,
            autocast=self._autocast,
            backward=self._backward,
        )

    def _sync(self, model: nn.Module, is_last: bool) -> ContextManager:
        return NO_CONTEXT


class NativeStrategy(MicroBatched):
    """torch's own step: micro-batches under torch.autocast, backward (fp16: through the GradScaler),
    then native_step. Subclasses say how a micro-batch's backward syncs (`_sync`), or replace `gradients`."""

    engine = "native"

    def __init__(self, cfg: Any, ctx: DistContext):
        self.ctx, self.micro_batches, self.compile = ctx, cfg.trainer.accumulate_steps, cfg.trainer.compile
        self.world_size = ctx.world_size
        self.precision = build_precision(cfg.trainer.precision, ctx.device)
        self.scaler = self.precision.scaler
        self._autocast = self.precision.autocast

    def _compiled(self, model: nn.Module) -> nn.Module:
        """trainer.compile: the module the step calls, compiled (the first steps pay the compilation)."""
        return torch.compile(model) if self.compile else model

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: Any, model: nn.Module, clip: Any) -> None:
        native_step(optimizer, model, clip, self.scaler)
