"""engine: accelerate. HF Accelerate's Accelerator does DDP's wrapping, autocast, backward and stepping.

For users who keep Accelerate's launcher (`accelerate launch -m distrain train CONFIG`), its config file,
its mixed-precision flag and its plugins, with distrain's configs, sharding, exact metrics, checkpoints
and logging. What distrain keeps for itself, and why:

- The process group. distrain.launch.dist creates it (restart-safe rendezvous, dist.timeout_s) before the
  Accelerator exists; Accelerate sees an initialised group and uses it.
- The data. Batches come from distrain's GlobalBatchSampler, already sharded per global batch; preparing a
  DataLoader with Accelerate would shard it a second time and pad the last batch with repeated samples.
  Because both engines see the same samples in the same order, they end with the same weights.
- The LR scheduler. A prepared scheduler steps once per process per optimizer step (unless split_batches);
  distrain's schedules are defined per optimizer step, so the loop steps the raw scheduler once.
- The checkpoint format. Model, optimizer and scaler state are the same plain state dicts as the native
  engine's, written atomically with checksums (distrain.checkpoint), so a checkpoint resumes in either
  engine. Sharded plugins (FSDP, DeepSpeed) hold shard-local optimizer state, which that format cannot
  hold: they are refused while checkpoints are on (see `check_plugin`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, ContextManager

import torch
from torch import nn

from distrain.checkpoint.options import CheckpointConfig
from distrain.errors import ConfigError
from distrain.launch.dist import DistContext
from distrain.strategies.base import refuse_several
from distrain.strategies.native import MicroBatched
from distrain.strategies.precision import NO_CONTEXT, check_precision

log = logging.getLogger("distrain")

_PRECISION = {"32": "no", "bf16": "bf16", "fp16": "fp16"}


def export_env_for_accelerate(ctx: DistContext) -> None:
    """Accelerate reads the rank layout from torchrun's variables. Under srun they are not set, so give it
    what distrain detected (torchrun and `accelerate launch` set them already; nothing is overwritten)."""
    env = ctx.env
    if not env.is_distributed:
        return
    for key, value in (
        ("RANK", env.rank),
        ("WORLD_SIZE", env.world_size),
        ("LOCAL_RANK", env.local_rank),
        ("LOCAL_WORLD_SIZE", env.local_world_size),
        ("MASTER_ADDR", env.master_addr),
        ("MASTER_PORT", env.master_port),
    ):
        os.environ.setdefault(key, str(value))


def check_plugin(distributed_type: str, cfg: CheckpointConfig) -> None:
    sharded = distributed_type in ("FSDP", "DEEPSPEED", "MEGATRON_LM")
    saves = cfg.every_steps or cfg.every_epochs or cfg.resume != "never"
    if sharded and saves:
        raise ConfigError(
            "checkpoint",
            f"Accelerate runs with {distributed_type}, whose optimizer state is "
            "sharded over the ranks; distrain checkpoints hold full state dicts",
            "set checkpoint.every_steps=0 checkpoint.every_epochs=0 checkpoint.resume=never, "
            "or train with DDP (no FSDP/DeepSpeed in the accelerate config)",
        )


class AccelerateStrategy(MicroBatched):
    engine = "accelerate"
    checkpoint_format = "whole"  # DDP only: every rank holds the whole state (sharded plugins: check_plugin)

    def __init__(self, cfg: Any, ctx: DistContext):
        try:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs
        except ImportError:
            raise ConfigError(
                "engine",
                "is 'accelerate' but the accelerate package is not installed",
                "pip install accelerate (a dependency of distrain: reinstall it), or use engine=native",
            ) from None
        export_env_for_accelerate(ctx)
        check_precision(cfg.trainer.precision, ctx.device, engine="accelerate")
        ddp = cfg.ddp
        # trainer.precision=32 leaves the choice to Accelerate's launcher flag or config file, if any.
        mixed = None if cfg.trainer.precision == "32" else _PRECISION[cfg.trainer.precision]
        self.accelerator = Accelerator(
            cpu=ctx.device.type == "cpu",
            mixed_precision=mixed,
            dynamo_backend="inductor" if cfg.trainer.compile else None,
            gradient_accumulation_steps=cfg.trainer.accumulate_steps,
            kwargs_handlers=[
                DistributedDataParallelKwargs(
                    bucket_cap_mb=ddp.bucket_cap_mb,
                    find_unused_parameters=ddp.find_unused_parameters,
                    gradient_as_bucket_view=ddp.gradient_as_bucket_view,
                    static_graph=ddp.static_graph,
                )
            ],
        )
        acc = self.accelerator
        if acc.num_processes != ctx.world_size or acc.process_index != ctx.rank:
            raise ConfigError(
                "engine",
                f"Accelerate sees {acc.num_processes} process(es) (this is index "
                f"{acc.process_index}) but the launcher started {ctx.world_size} (this is rank "
                f"{ctx.rank})",
                "launch with torchrun, srun or `accelerate launch --multi_gpu "
                "--num_processes N` (`--cpu` alone starts one process)",
            )
        check_plugin(acc.distributed_type.value, cfg.checkpoint)
        self.accumulate_steps = self.micro_batches = cfg.trainer.accumulate_steps
        self.world_size = acc.num_processes
        self.scaler = acc.scaler
        log.info(
            "engine accelerate: %s, mixed precision %s, device %s",
            acc.distributed_type,
            acc.mixed_precision,
            acc.device,
        )

    def setup(self, model: nn.Module) -> nn.Module:
        refuse_several(model, "engine", "accelerate")
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        return self.accelerator.prepare(model, optimizer)

    def _sync(self, model: nn.Module, is_last: bool) -> ContextManager:
        # Accelerate counts micro-batches itself and syncs every gradient_accumulation_steps-th one; the
        # step runs exactly that many per optimizer step, so its count and `is_last` always agree. Without
        # accumulation its context would only add work per step.
        if self.accumulate_steps == 1:
            return NO_CONTEXT
        return self.accelerator.accumulate(model)

    def _autocast(self) -> ContextManager:
        if self.accelerator.mixed_precision == "no":
            return NO_CONTEXT
        return self.accelerator.autocast()

    def _backward(self, loss: torch.Tensor) -> None:
        # Accelerate divides each micro-batch loss by gradient_accumulation_steps, assuming per-micro-batch
        # means. distrain's loss is already weighted so that the micro-batch gradients add up to the global
        # batch's mean gradient (Objective.step_loss); multiplying first cancels Accelerate's division.
        if self.accumulate_steps > 1:
            loss = loss * self.accumulate_steps
        self.accelerator.backward(loss)

    def step(self, optimizer: Any, model: nn.Module, clip: Any) -> None:
        # Accelerate's clipping unscales fp16 gradients first; its optimizer steps through the scaler.
        if clip is not None and clip.clip_grad_value is not None:
            self.accelerator.clip_grad_value_(model.parameters(), clip.clip_grad_value)
        if clip is not None and clip.clip_grad_norm is not None:
            self.accelerator.clip_grad_norm_(model.parameters(), clip.clip_grad_norm)
        optimizer.step()

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction="sum")

    def release(self) -> None:
        from accelerate.state import AcceleratorState, GradientState

        self.accelerator.free_memory()  # drops its references to the wrapped model and optimizer
        # Accelerate's state is a process-wide singleton; reset it so a later run in this process (tests,
        # notebooks) can choose other settings. The process group itself stays with distrain.launch.dist.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
