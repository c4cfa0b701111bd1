"""How is the model wrapped? DistributedDataParallel when there is more than one process, else the bare model.

The loops train the wrapped model; checkpoints and evaluation use the unwrapped one, so a checkpoint
loads into a plain nn.Module with no "module." prefixes.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distrain.config.schema import DDPConfig
from distrain.launch.dist import DistContext


def wrap_model(model: nn.Module, ctx: DistContext, cfg: DDPConfig) -> nn.Module:
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # find_unused_parameters is off by default: it costs a graph traversal every step and every model
    # shipped here uses all its parameters; a model that does not gets DDP's own clear error naming it.
    return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=cfg.bucket_cap_mb,
                                   gradient_as_bucket_view=cfg.gradient_as_bucket_view,
                                   static_graph=cfg.static_graph,
                                   find_unused_parameters=cfg.find_unused_parameters)
