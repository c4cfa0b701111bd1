"""How gradients travel: DDP's communication hooks (ddp.comm_hook) and what a strategy measures of its
exchange (CommMeter), for the step log's "comm" figures.

    hook = build_comm_hook(cfg.ddp, meter)      # None for comm_hook: none (DDP's own float32 all-reduce)
    ddp_model.register_comm_hook(hook.state, hook)
    hook.state_dict() / hook.load_state_dict(state)   # PowerSGD's error feedback and warm-start matrices

- fp16, bf16: each bucket is cast to half precision for the all-reduce (half the bytes), averaged there and
  cast back (torch's fp16_compress_hook, bf16_compress_hook);
- powersgd: each bucket's matrices sent as rank-r factors P and Q (torch's powerSGD_hook), after
  `powersgd_start_step` steps of plain all-reduce; with error feedback, what the factors missed is added
  to the next step's gradient, and with warm start last step's Q starts the next. That state differs per
  rank and is in every checkpoint (DDPStrategy.state_dict), so a resume continues bitwise.

The hook is wrapped to count what it hands to the network (bytes of the all-reduced payload: a ring
all-reduce puts about twice that on each rank's link) and how long the step waits for the last bucket
after the backward's compute ends (the part of the exchange that backward does not hide).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

log = logging.getLogger("distrain")
# PowerSGDState's slots: what it accumulates while training (in every checkpoint), and its settings (the
# config's ddp.powersgd_*: this run's, never a checkpoint's).
_RUNNING = (
    "iter",
    "error_dict",
    "p_memory_dict",
    "q_memory_dict",
    "rng",
    "total_numel_before_compression",
    "total_numel_after_compression",
    "next_stats_report",
)
_SETTINGS = ("matrix_approximation_rank", "start_powerSGD_iter", "use_error_feedback", "warm_start")


class CommMeter:
    """Cumulative figures of a strategy's gradient exchange on this rank: payload bytes handed to
    collectives and seconds spent waiting for them. The trainer logs their change over each window."""

    def __init__(self) -> None:
        self.bytes = 0.0
        self.wait_s = 0.0
        self.waits = False  # whether wait_s is measured (not every exchange can be timed apart)

    def figures(self) -> dict[str, float]:
        return {"comm_bytes": self.bytes, **({"comm_wait_s": self.wait_s} if self.waits else {})}


class CommHook:
    """A DDP comm hook (torch's) with its state, counting bytes and the wait for the last bucket."""

    def __init__(self, name: str, hook: Any, state: Any, meter: CommMeter):
        self.name, self.hook, self.state, self.meter = name, hook, state, meter
        meter.waits = True
        self._last_call = 0.0
        # PowerSGD's arithmetic depends on where each matrix lies in the bucket (DDPStrategy._settle_buckets).
        self.needs_settled_buckets = name == "powersgd"
        self.param_index: dict[int, int] = {}  # id(parameter) -> its index in the model (set by `registered`)
        self.layouts: dict[int, tuple[int, ...]] = {}  # bucket index -> the parameters its state is laid out by

    def _follow_layout(self, bucket: Any) -> None:
        """PowerSGD keeps its state per bucket as flat buffers in the bucket's parameter order. DDP builds
        its buckets anew after the first step of every process (in the order gradients became ready), so
        a resumed run's first step could see another order than the state was written in (DDPStrategy
        settles the layout first; this is the guard where it could not): the state is laid out again,
        parameter by parameter, so that each tensor's error feedback and factors stay its own."""
        index = bucket.index()
        layout = tuple(self.param_index[id(p)] for p in bucket.parameters())
        old = self.layouts.get(index)
        self.layouts[index] = layout
        if old is None or old == layout:
            return
        state, params = self.state, {self.param_index[id(p)]: p for p in bucket.parameters()}
        if index in state.error_dict:
            state.error_dict[index] = _relaid(
                state.error_dict[index], old, layout, {i: p.numel() for i, p in params.items()}
            )
        if index in state.p_memory_dict:
            p_sizes, q_sizes = _factor_sizes(params, state.matrix_approximation_rank, state.min_compression_rate)
            state.p_memory_dict[index] = _relaid(state.p_memory_dict[index], _factor_order(old, params, p_sizes),
                                                 _factor_order(layout, params, p_sizes), p_sizes)  # fmt: skip
            state.q_memory_dict[index] = _relaid(state.q_memory_dict[index], _factor_order(old, params, q_sizes),
                                                 _factor_order(layout, params, q_sizes), q_sizes)  # fmt: skip

    def __call__(self, state: Any, bucket: Any) -> torch.futures.Future:
        self._last_call = time.perf_counter()
        if self.name == "powersgd":
            self._follow_layout(bucket)
        buffer = bucket.buffer()
        size = buffer.numel() * buffer.element_size()
        if self.name == "powersgd":
            plain, counted = state.iter < state.start_powerSGD_iter, state.total_numel_after_compression
        future = self.hook(state, bucket)
        if self.name != "powersgd":
            self.meter.bytes += size / 2  # fp16 or bf16 on the wire
        elif plain:  # before powersgd_start_step: the whole bucket, all-reduced as it is
            self.meter.bytes += size
        else:  # PowerSGD counts what it sends: the factors P and Q, and what it leaves uncompressed
            self.meter.bytes += (state.total_numel_after_compression - counted) * buffer.element_size()
        return future

    def registered(self, model: torch.nn.Module) -> Any:
        """The function DDP registers for `model` (the module DDP wraps): unannotated (DDP checks a hook's
        annotations against its own types, and this module's are strings), named after the hook."""
        self.param_index = {id(p): i for i, p in enumerate(model.parameters())}

        def hook(state, bucket):  # noqa: ANN001, ANN202
            return self(state, bucket)

        hook.__name__ = f"distrain_{self.name}_hook"
        return hook

    def backward_done(self) -> None:
        """After a backward that synced: the time from the last bucket's hook to the end of backward (DDP
        waits for every bucket's future there) is the exchange that compute did not hide."""
        if self._last_call:
            self.meter.wait_s += time.perf_counter() - self._last_call
            self._last_call = 0.0

    def state_dict(self) -> dict[str, Any]:
        """PowerSGD's state on this rank (error feedback, warm-start factors, its step count, its generator);
        nothing for the stateless hooks. Plain tensors and numbers: a checkpoint loads without pickle."""
        if self.name != "powersgd":
            return {}
        state = {slot: getattr(self.state, slot) for slot in _RUNNING}
        name, keys, pos, has_gauss, cached = state.pop("rng").get_state()
        state["rng"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
        return {
            "powersgd": state,
            "settings": {slot: getattr(self.state, slot) for slot in _SETTINGS},
            "layouts": {i: list(layout) for i, layout in self.layouts.items()},
        }

    def load_state_dict(self, saved: dict[str, Any] | None) -> bool:
        """Continue from a checkpoint's state; False when it holds none to continue from."""
        if self.name != "powersgd":
            return True
        if not saved or "powersgd" not in saved:
            return False
        state = dict(saved["powersgd"])
        self.layouts = {int(i): tuple(layout) for i, layout in saved.get("layouts", {}).items()}
        name, keys, pos, has_gauss, cached = state.pop("rng")
        self.state.rng.set_state((name, keys.cpu().numpy().astype("uint32"), pos, has_gauss, cached))
        for slot, value in state.items():  # in place: the registered hook holds this object
            if slot in _RUNNING:
                setattr(self.state, slot, value)
        settings = {slot: getattr(self.state, slot) for slot in _SETTINGS}
        if saved.get("settings", settings) != settings:
            # The settings are this run's (ddp.powersgd_*); factors of another rank do not fit: they start
            # afresh (warm start from random), the error feedback goes on.
            self.state.p_memory_dict, self.state.q_memory_dict = {}, {}
            log.warning(
                "ddp.powersgd_* changed since the checkpoint (%s -> %s): PowerSGD's factors start afresh, "
                "its error feedback goes on",
                saved["settings"],
                settings,
            )
        return True


def build_comm_hook(cfg: Any, meter: CommMeter) -> CommHook | None:
    """The hook ddp.comm_hook names (None: DDP's own float32 all-reduce, nothing registered)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    name = cfg.comm_hook
    if name == "none":
        return None
    if name in ("fp16", "bf16"):
        hook = default_hooks.fp16_compress_hook if name == "fp16" else default_hooks.bf16_compress_hook

        return CommHook(name, hook, None, meter)
    state = powerSGD_hook.PowerSGDState(
        process_group=None,
        matrix_approximation_rank=cfg.powersgd_rank,
        start_powerSGD_iter=cfg.powersgd_start_step,
        use_error_feedback=cfg.powersgd_error_feedback,
        warm_start=cfg.powersgd_warm_start,
        random_seed=0,
    )

    return CommHook(name, powerSGD_hook.powerSGD_hook, state, meter)


def _relaid(flat: torch.Tensor, old: tuple[int, ...], new: tuple[int, ...], sizes: dict[int, int]) -> torch.Tensor:
    """`flat`, the concatenation of per-parameter pieces in the order `old`, in the order `new` instead."""
    pieces, start = {}, 0
    for i in old:
        pieces[i] = flat[start : start + sizes[i]]
        start += sizes[i]
    return torch.cat([pieces[i] for i in new]) if new else flat


def _factor_sizes(params: dict[int, torch.Tensor], rank: int, min_rate: float) -> tuple[dict[int, int], dict[int, int]]:
    """Per parameter that PowerSGD compresses (its test, powerSGD_hook's), the sizes of its P and Q."""
    p_sizes, q_sizes = {}, {}
    for i, p in params.items():
        n = p.shape[0] if p.dim() else 1
        m = p.numel() // max(n, 1)
        r = min(n, m, rank)
        if (n + m) * r * min_rate < n * m:
            p_sizes[i], q_sizes[i] = n * r, m * r
    return p_sizes, q_sizes


def _factor_order(layout: tuple[int, ...], params: dict[int, torch.Tensor], sizes: dict[int, int]) -> tuple[int, ...]:
    """The order of the compressed parameters' factors in PowerSGD's memory for a bucket laid out as
    `layout`: grouped by matrix shape, in the order each shape first occurs, then bucket order."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i in layout:
        if i in sizes:
            p = params[i]
            n = p.shape[0] if p.dim() else 1
            by_shape.setdefault((n, p.numel() // max(n, 1)), []).append(i)
    return tuple(i for group in by_shape.values() for i in group)
