"""strategy: fsdp with trainer.exact: true. The model sharded as strategy fsdp shards it (FSDP2's
fully_shard, the same units, sharded checkpoints), trained bitwise as exact mode trains it with ddp: the
same weights and figures on every world size that divides the chunk count, and as one process.

    ExactFSDPStrategy(cfg, ctx)    # chosen by build_strategy for strategy fsdp in exact mode

FSDP2 reduce-scatters each unit's gradient in float inside backward, adding the ranks' partial sums in an
order the world size sets. Here that reduce-scatter is off, and exact mode's sum makes the exchange:

- each of this rank's chunks runs alone (strategies/exact.py: fixed chunks, seeded generators), with
  FSDP's gradient sync off and the units left gathered after backward, so that the chunk's whole
  (unsharded) gradient is on the gathered parameters: it is taken off them before the next chunk;
- exact_sum adds the chunks' whole gradients (grid, float64, two all-reduces): the same bits on every rank;
- each sharded parameter's .grad becomes this rank's rows of that sum (a DTensor laid out as the
  parameter), and the optimizer steps the shards. Clipping runs on the whole sum, which every rank holds:
  the same norm, bitwise, as exact ddp's (the shards' own norm would be a float all-reduce), and the
  shards are cut again from the clipped sum.

The price, in memory: during a step each rank holds the whole gathered model, one whole float32 gradient
per local chunk, and a float64 vector and a float32 result of the whole gradient's size (exact_sum's).
Between steps only the shards stay (parameters, gradients, optimizer state): sharding still divides the
optimizer state and the checkpoints, not the step's peak. In communication: exact ddp's float64 all-reduce of the whole
gradient, and each unit gathered once per chunk's forward (twice when resharded after forward), against
one reduce-scatter per unit and step for strategy fsdp.

In one process without a process group there is nothing to shard over: the model stays a plain module
and the step is exact mode's own (checkpoints are still the sharded kind, as strategy fsdp writes them).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from distrain.errors import ConfigError
from distrain.launch import dist
from distrain.launch.dist import DistContext
from distrain.strategies.base import Gradients
from distrain.strategies.exact import ExactStrategy
from distrain.strategies.exact_sum import exact_sum
from distrain.strategies.fsdp import is_sharded, shard_model
from distrain.strategies.native import clip_gradients


def shard_rows(rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """(first row, row count) of `rank`'s shard of a tensor of `rows` rows: FSDP2 shards dim 0 as
    torch.chunk cuts it (ceil(rows / world_size) rows each, the last ranks fewer or none)."""
    per_rank = -(-rows // world_size)
    start = min(rank * per_rank, rows)
    return start, min(per_rank, rows - start)


def shard_of(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's rows of `whole` (a parameter's whole gradient) as the sharded parameter's .grad: a
    DTensor laid out as `param`, holding a copy of the rows (so the whole sum can be freed after the
    step). Raises if FSDP2's layout is not the one shard_rows knows."""
    from torch.distributed.tensor import DTensor, Shard

    mesh, local = param.device_mesh, param.to_local()
    if tuple(param.placements) != (Shard(0),) or whole.dim() == 0:
        raise RuntimeError(f"exact fsdp: a parameter sharded as {param.placements}, not on dim 0 of {whole.shape}")
    start, rows = shard_rows(whole.shape[0], mesh.size(), mesh.get_local_rank())
    view = whole.narrow(0, start, rows)
    if view.shape != local.shape:
        raise RuntimeError(f"exact fsdp: FSDP2 gave this rank {tuple(local.shape)}, not rows {start}:{start + rows}")
    return DTensor.from_local(
        view.clone(), mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


class ExactFSDPStrategy(ExactStrategy):
    """strategy fsdp in exact mode: exact mode's chunks and sum (ExactStrategy) over a model sharded by
    fully_shard, with FSDP's own reduce-scatter off. See the module docstring."""

    # As strategy fsdp: every rank writes its shards (in one process too: one format on every world size).
    checkpoint_format = "sharded"
    # Each forward gathers the units with every rank: a rank with fewer evaluation batches pads.
    pads_evaluation = True
    # fully_shard replaces the parameters by DTensors: the optimizer is built over them, afterwards.
    replaces_parameters = True

    def __init__(self, cfg: Any, ctx: DistContext):
        super().__init__(cfg, ctx)  # data.streams (lanes) is refused in exact mode: fixed chunks
        self.fsdp_cfg = cfg.fsdp
        self.sharded = False
        self.names: list[str] = []  # the trainable parameters' names, the order of self.reduce.params
        self.whole: list[torch.Tensor] = []  # the step's exact sum, whole, from gradients() to step()

    def setup(self, model: nn.Module) -> nn.Module:
        model = super().setup(model)  # several models and SyncBatchNorm refused; BatchNorm's replay built
        if self.fsdp_cfg.activation_checkpointing and self.statistics is not None:
            raise ConfigError(
                "fsdp.activation_checkpointing",
                f"recomputes the forward of {self.statistics.names[0]} (a BatchNorm) in backward, and exact "
                "mode replays one running-statistics update per layer and chunk",
                "set fsdp.activation_checkpointing=false, or trainer.exact=false",
            )
        # fully_shard keeps each rank's rows of its own weights: every rank first takes rank 0's (and its
        # buffers), as exact ddp does, so a model built without the seed still starts as one model.
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast_tensor(tensor.data)
        model = shard_model(model, self.ctx, self.fsdp_cfg)
        self.sharded = self.loads_into_shards = is_sharded(model)
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        if not self.sharded:  # one process without a group: exact mode's plain module
            return super().prepare(model, optimizer)
        # No reduce-scatter inside backward (its float sum depends on the world size); and the units stay
        # gathered after backward, so each chunk's whole gradient is on the registered (gathered)
        # parameters, as fully_shard documents for unsharded modules. Resharded once all chunks ran.
        model.set_requires_gradient_sync(False)
        model.set_reshard_after_backward(False)
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trainable]
        self.reduce = exact_sum([p for _, p in trainable], self.chunking.chunks)  # shapes: the whole ones
        return model, optimizer

    def gradients(self, model: nn.Module, batch: Any, objective: Any, global_step: int) -> Gradients:
        """ExactStrategy.gradients over the gathered model: each chunk alone, its whole gradient taken;
        then the exact sum, whole on every rank, and each parameter's shard of it as its .grad. Collective."""
        if not self.sharded:
            return super().gradients(model, batch, objective, global_step)
        # Empty chunks (an uneven last batch) run too: each forward and backward gathers the units with
        # every rank, so every rank runs as many. Their zero-row outputs are discarded.
        chunks, records, step_loss = self.run_chunks(model, batch, objective, global_step, keep_empty=True)
        for module in model.modules():  # the shards registered again, the gathered parameters freed
            if is_sharded(module):
                module.reshard()  # type: ignore[operator]
        if self.statistics is not None:
            self.statistics.finish()  # collective, like the sum below: every rank calls both every step
        self.whole = self.reduce(chunks)
        for param, grad in zip(self.reduce.params, self.whole):
            param.grad = shard_of(grad, param)
        return Gradients(step_loss, records, ranks_average=False)

    def take_gradients(self, model: nn.Module) -> list[torch.Tensor | None]:
        """This chunk's whole gradients, taken off the gathered parameters (which are left without one, for
        the next chunk); zeros for a parameter that got none (its unit did not run backward)."""
        if not self.sharded:
            return super().take_gradients(model)
        registered = dict(model.named_parameters())  # the gathered parameters, registered while gathered
        grads: list[torch.Tensor | None] = []
        for name, sharded in zip(self.names, self.reduce.params):
            param = registered[name]
            grad = None if param is sharded else param.grad  # still sharded: its unit ran no backward
            if grad is None:
                grad = torch.zeros(sharded.shape, dtype=sharded.dtype, device=self.reduce.device)
            else:
                param.grad = None
            grads.append(grad)
        return grads

    def step(self, optimizer: Any, model: nn.Module, clip: Any) -> None:
        if not self.sharded:
            return super().step(optimizer, model, clip)
        if clip is not None and (clip.clip_grad_value is not None or clip.clip_grad_norm is not None):
            # Not on the shards: their total norm is a float all-reduce of per-rank norms, in an order the
            # world size sets. Every rank holds the whole sum: torch's own clipping of it gives exact
            # ddp's norm and factor, bitwise; then each rank's rows of the clipped sum are its shards'.
            whole = [SimpleNamespace(grad=grad) for grad in self.whole]
            clip_gradients(SimpleNamespace(parameters=lambda: whole), clip)  # type: ignore[arg-type]
            for param, grad in zip(self.reduce.params, self.whole):
                param.grad = shard_of(grad, param)
        optimizer.step()
        self.whole = []
