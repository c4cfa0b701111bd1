"""The strategies' own options (the `ddp:` and `fsdp:` sections) and the rules that tie a strategy to the
rest of the config, checked when the config is read (`check_strategy`, called by Config). No torch import:
config errors stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from distrain.config.coerce import check


@dataclass(kw_only=True)
class DDPConfig:
    bucket_cap_mb: float = 25.0
    """Gradient bucket size for DDP's all-reduce (torch's default 25 MB)."""
    gradient_as_bucket_view: bool = True
    """Gradients are views into the all-reduce buckets: one copy less per step, less memory."""
    static_graph: bool = False
    """Promise DDP the same graph every step (lets it skip per-step bookkeeping)."""
    find_unused_parameters: bool = False
    """Search each step for parameters that got no gradient; needed only by models that skip parameters."""
    comm_hook: Literal["none", "fp16", "bf16", "powersgd"] = "none"
    """How gradients travel in the all-reduce: none (float32, exact to rounding), fp16 or bf16 (half the
    bytes; averaged in that precision), powersgd (low-rank factors with error feedback: far fewer bytes).
    For slow links; see the docs page "Training over slow links"."""
    powersgd_rank: int = 1
    """ddp.comm_hook powersgd: the rank of the factors (more: closer to the full gradient, more bytes)."""
    powersgd_start_step: int = 10
    """ddp.comm_hook powersgd: steps of plain all-reduce before compressing (the early, fast-moving steps)."""
    powersgd_error_feedback: bool = True
    """ddp.comm_hook powersgd: add what the factors missed to the next step's gradient (keeps accuracy)."""
    powersgd_warm_start: bool = True
    """ddp.comm_hook powersgd: start each step's factors from the last step's (one power iteration suffices)."""

    def __post_init__(self) -> None:
        check(self.bucket_cap_mb > 0, "ddp.bucket_cap_mb", f"must be > 0, got {self.bucket_cap_mb}")
        check(self.powersgd_rank > 0, "ddp.powersgd_rank", f"must be > 0, got {self.powersgd_rank}")
        stateful = self.powersgd_error_feedback or self.powersgd_warm_start
        check(
            self.powersgd_start_step >= (2 if stateful else 1),
            "ddp.powersgd_start_step",
            f"must be >= {2 if stateful else 1}, got {self.powersgd_start_step} (PowerSGD's error feedback and warm "
            "start need one plain all-reduce first: DDP lays its buckets out after the first step)",
        )


@dataclass(kw_only=True)
class DiLoCoConfig:
    """strategy: diloco. Each process trains its own replica with the optimizer (the inner one) for
    diloco.sync_every steps; then the replicas average how far they moved (the pseudo-gradient) and an
    outer optimizer moves the shared weights by it. Local SGD: outer_lr 1.0, outer_momentum 0."""

    sync_every: int = 50
    """H: inner steps between syncs (also at the end of every epoch, before evaluation)."""
    outer_lr: float = 0.7
    """The outer optimizer's learning rate (DiLoCo's 0.7; local SGD: 1.0)."""
    outer_momentum: float = 0.9
    """The outer optimizer's momentum, Nesterov (DiLoCo's 0.9; local SGD: 0)."""
    overlap_steps: int = 0
    """Inner steps the sync's all-reduce travels behind: 0, the replicas wait for it at the sync (DiLoCo as
    published); d > 0, they train on for d steps while it travels, and the outer step lands d steps late,
    keeping what they learned meanwhile (as streaming DiLoCo overlaps its fragments). Less than sync_every."""
    wire_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The pseudo-gradient's dtype on the wire (bfloat16/float16: half the bytes, summed in that dtype)."""

    def __post_init__(self) -> None:
        check(self.sync_every > 0, "diloco.sync_every", f"must be > 0, got {self.sync_every}")
        check(self.outer_lr > 0, "diloco.outer_lr", f"must be > 0, got {self.outer_lr}")
        check(
            0 <= self.overlap_steps < self.sync_every,
            "diloco.overlap_steps",
            f"must be >= 0 and less than diloco.sync_every ({self.sync_every}), got {self.overlap_steps}",
        )
        check(0 <= self.outer_momentum < 1, "diloco.outer_momentum", f"must be in [0, 1), got {self.outer_momentum}")


@dataclass(kw_only=True)
class FSDPConfig:
    """Sharded data parallelism (strategy: fsdp; FSDP2's fully_shard): each rank holds 1/N of the
    parameters, gradients and optimizer state; a unit's parameters are gathered just for its forward and
    backward."""

    units: list[str] | None = None
    """Module class names sharded as units (e.g. [TransformerEncoderLayer]); null: every module whose
    parameters not yet in a unit reach fsdp.min_unit_params, innermost first. The model is the last unit."""
    min_unit_params: int = 1_000_000
    """With fsdp.units null: the parameter count that makes a module a unit of its own."""
    reshard_after_forward: bool = True
    """Free a unit's gathered parameters after its forward (gathered again for backward): least memory.
    false keeps them until backward: one all-gather less per unit and step, more memory."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the gathered parameters used in forward and backward (bfloat16: mixed precision; the
    sharded parameters, the optimizer and the gradient reduction stay float32)."""
    cpu_offload: bool = False
    """Keep the sharded parameters, gradients and optimizer state in CPU memory (GPU training only): the
    optimizer steps on the CPU."""
    activation_checkpointing: bool = False
    """Recompute each unit's activations in backward instead of keeping them (less memory, ~1/3 more compute)."""

    def __post_init__(self) -> None:
        check(self.min_unit_params > 0, "fsdp.min_unit_params", f"must be > 0, got {self.min_unit_params}")
        check(
            self.units is None or len(self.units) > 0,
            "fsdp.units",
            "must name at least one module class, or be null (units chosen by size)",
        )


def is_exact(cfg: Any) -> bool:
    """Exact mode: strategy exact, or its older spelling trainer.exact: true."""
    return cfg.strategy == "exact" or cfg.trainer.exact


def check_strategy(cfg: Any) -> None:  # a distrain.config.schema.Config (which imports this module)
    """What each strategy refuses in the rest of the config, before anything is built (exit 2, the key named)."""
    # Refused loudly: torch's reducer asserts when no_sync (used for accumulation) meets a static graph.
    check(
        not (cfg.ddp.static_graph and cfg.trainer.accumulate_steps > 1),
        "ddp.static_graph",
        "cannot be combined with trainer.accumulate_steps > 1 (DDP's no_sync does not support it)",
        "set ddp.static_graph=false, or trainer.accumulate_steps=1",
    )
    if is_exact(cfg):
        _check_exact(cfg)
        check(
            not cfg.data.streams,
            "data.streams",
            "cannot be used in exact mode: it deals each global batch in fixed chunks, not by rank",
        )
    if cfg.ddp.comm_hook != "none":
        check(
            cfg.strategy == "ddp" and not cfg.trainer.exact and cfg.engine == "native",
            "ddp.comm_hook",
            f"is {cfg.ddp.comm_hook!r}: a DDP communication hook applies to strategy ddp on the native engine "
            f"(this is strategy {cfg.strategy}{', trainer.exact' if cfg.trainer.exact else ''}, engine {cfg.engine})",
            "set ddp.comm_hook=none, or strategy=ddp engine=native",
        )
        check(
            not cfg.trainer.compile,
            "ddp.comm_hook",
            "cannot be combined with trainer.compile here (a compiled DDP model runs its own all-reduce)",
            "set trainer.compile=false, or ddp.comm_hook=none",
        )
    if cfg.strategy == "diloco":
        check(
            cfg.engine == "native",
            "strategy",
            "diloco runs on the native engine (Accelerate reduces every step's gradients itself)",
            "set engine=native",
        )
        check(
            cfg.trainer.precision != "fp16",
            "trainer.precision",
            "fp16 is not supported with strategy=diloco (each replica's gradient scaler would drift apart)",
            "use trainer.precision=bf16 or 32",
        )
    if cfg.strategy == "fsdp":
        check(
            cfg.engine == "native",
            "strategy",
            "fsdp runs on the native engine; engine=accelerate trains with DDP only (its checkpoint "
            "format holds no sharded state)",
            "set engine=native, or strategy=ddp",
        )
        check(
            cfg.trainer.precision != "fp16",
            "trainer.precision",
            "fp16 is not supported with strategy=fsdp (its gradient scaler is not sharding-aware)",
            "use fsdp.param_dtype=bfloat16 or trainer.precision=bf16",
        )
        check(
            not cfg.log.grad_norms,
            "log.grad_norms",
            "is not supported with strategy=fsdp: per-parameter gradient hooks see no gradients of "
            "sharded parameters (the total gradient norm of the step logs is still reported)",
            "set log.grad_norms=false, or strategy=ddp",
        )
        check(
            not cfg.trainer.compile,
            "trainer.compile",
            "is not supported with strategy=fsdp here (untested with sharded parameters)",
            "set trainer.compile=false, or strategy=ddp",
        )


def _check_exact(cfg: Any) -> None:
    """trainer.exact sums chunk gradients in fixed point itself: only where that sum replaces the
    strategy's own reduction (DDP's float all-reduce) is the result independent of the world size."""
    way_out = "set trainer.exact=false"
    check(
        cfg.engine == "native",
        "trainer.exact",
        "is not available with engine=accelerate (Accelerate reduces the gradients itself, in float)",
        f"set engine=native, or {way_out}",
    )
    check(
        cfg.strategy in ("ddp", "exact", "fsdp"),
        "trainer.exact",
        f"is not available with strategy={cfg.strategy} (its replicas train apart: exact mode is one exact "
        "sum every step)",
        f"use strategy=ddp or fsdp, or {way_out}",
    )
    if cfg.strategy == "fsdp":  # strategies/exact_fsdp.py: exact mode's sum in place of the reduce-scatter
        check(
            cfg.fsdp.param_dtype == "float32",
            "fsdp.param_dtype",
            f"is {cfg.fsdp.param_dtype} in exact mode: a process without a group trains the whole model in "
            "float32, so the world size would change the arithmetic",
            f"set fsdp.param_dtype=float32 (trainer.precision=bf16 is exact on any world size), or {way_out}",
        )
        check(
            not cfg.fsdp.cpu_offload,
            "fsdp.cpu_offload",
            "is not available in exact mode: the exact sum holds the whole gradients on the device anyway",
            f"set fsdp.cpu_offload=false, or {way_out}",
        )
    # (That exact_chunk divides the global batch is checked with the world size, by strategies/exact.py's
    # count_chunks: a sharded stream's chunks are its lanes, and its exact_chunk is not used.)
