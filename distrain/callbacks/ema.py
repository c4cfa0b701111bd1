"""EMA: an exponential moving average of the weights, a built-in callback registered like a user's.

    callbacks: [{name: ema, args: {decay: 0.999, evaluate: true}}]
    distrain.fit(cfg, ..., callbacks=[distrain.EMA(decay=0.999)])

After every optimizer step: ema = decay * ema + (1 - decay) * weights (every floating parameter and
buffer). Checkpointed and resumed (a resumed run's average is bitwise the uninterrupted one's). With
`evaluate`, each epoch end evaluates the val and test splits with the averaged weights and logs them as
ema_<split>_<metric> (the model's own weights are put back after). Under fsdp each rank averages its own
shards (no communication per step); the checkpoint holds the whole tensors.
"""

from __future__ import annotations

from typing import Any

import torch


class EMA:
    def __init__(self, decay: float = 0.999, evaluate: bool = False):
        if not 0.0 < decay < 1.0:
            from distrain.errors import ConfigError

            raise ConfigError("callbacks.args.decay", f"must lie in (0, 1), got {decay}")
        self.decay, self.evaluate = float(decay), bool(evaluate)
        self.shadow: list[torch.Tensor] | None = None
        self._loaded: list[torch.Tensor] | None = None  # a checkpoint's average, before the model is seen

    def _tensors(self, model: torch.nn.Module) -> list[torch.Tensor]:
        return [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]

    def _start(self, model: torch.nn.Module) -> None:
        if self.shadow is not None:
            return
        tensors = self._tensors(model)
        if self._loaded is None:
            self.shadow = [t.detach().clone() for t in tensors]
            return
        if len(self._loaded) != len(tensors):
            raise ValueError(f"EMA: the checkpoint averages {len(self._loaded)} tensors, the model has {len(tensors)}")
        with torch.no_grad():
            self.shadow = [_like(saved, t.detach().clone()) for saved, t in zip(self._loaded, tensors)]
        self._loaded = None

    def on_train_start(self, run: Any) -> None:
        self._start(run.model)

    @torch.no_grad()
    def on_step_end(self, run: Any) -> None:
        for s, t in zip(self.shadow, self._tensors(run.model)):
            s.lerp_(t.detach(), 1.0 - self.decay)

    def on_epoch_end(self, run: Any, metrics: dict[str, Any]) -> None:
        if not self.evaluate:
            return
        with self.weights(run.model):
            figures = run.evaluate()
        run.log(
            **{
                f"ema_{split}_{name}": value
                for split, values in figures.items()
                for name, value in values.items()
                if isinstance(value, (int, float))
            }
        )

    def weights(self, model: torch.nn.Module) -> Any:
        """A context in which `model` holds the averaged weights."""
        import contextlib

        @contextlib.contextmanager
        def swapped():
            tensors = self._tensors(model)
            saved = [t.detach().clone() for t in tensors]
            with torch.no_grad():
                for t, s in zip(tensors, self.shadow):
                    t.copy_(s)
            try:
                yield
            finally:
                with torch.no_grad():
                    for t, s in zip(tensors, saved):
                        t.copy_(s)

        return swapped()

    def state_dict(self) -> dict[str, Any]:
        if self.shadow is None:  # saved before training started: whatever was loaded
            return {"decay": self.decay, "shadow": list(self._loaded or [])}
        # Whole tensors: a sharded (DTensor) average is gathered, so the checkpoint reshards on resume
        # (every rank calls this at every save, the same way: the gathers match).
        return {"decay": self.decay, "shadow": [_full(s) for s in self.shadow or []]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow, self._loaded = None, list(state["shadow"])  # placed on the model's devices at the start


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()


def _like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `target`: on its device, and sharded as it is (a DTensor: collective)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        full = full.to(device=target.to_local().device, dtype=target.dtype)
        return distribute_tensor(full, target.device_mesh, target.placements)
    return full.to(device=target.device, dtype=target.dtype).clone()
