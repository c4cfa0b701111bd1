"""When to stop before trainer.epochs: early stopping on a monitored metric (patience, min_delta) and
the tutorials' convergence rule (the last `window` epoch train losses lie within `threshold`).

Every rank sees the same all-reduced epoch metrics, so every rank reaches the same verdict; the train loop
still makes them agree with one collective (`dist.any_true`) so that no rank can ever stop alone and leave
the others waiting in the next all-reduce. The state (best value, epochs without improvement, recent
losses, and whether the run already stopped) is saved in each checkpoint and restored on resume.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping

from distrain.config.schema import StopConfig
from distrain.reporting.figures import EpochMetrics


class StopKind(enum.Enum):
    EARLY = "early"  # stop.patience: the monitored metric stopped improving
    CONVERGED = "converged"  # stop.window: the train losses settled
    MAX_STEPS = "max_steps"  # trainer.max_steps reached (a later, larger max_steps continues the run)
    OTHER_RANK = "other_rank"  # another rank's verdict (the ranks always agree)


class StopReason(str):
    """Why the run stopped: the message users read (a str: FitResult.stopped, the logs) and its `kind`."""

    kind: StopKind

    def __new__(cls, kind: StopKind, message: str) -> StopReason:
        reason = super().__new__(cls, message)
        reason.kind = kind
        return reason

    def __reduce__(self) -> tuple:  # pickle, copy and deepcopy (FitResult.stopped holds one)
        return (StopReason, (self.kind, str(self)))

    @staticmethod
    def of_state(message: str | None, kind: str | None) -> StopReason | None:
        """From a checkpoint's stopper state (a checkpoint from before the kind was saved: by its words)."""
        if message is None:
            return None
        if kind is None:
            starts = {"trainer.max_steps": StopKind.MAX_STEPS, "converged": StopKind.CONVERGED, "early": StopKind.EARLY}
            kind = next((k.value for prefix, k in starts.items() if message.startswith(prefix)), "other_rank")
        return StopReason(StopKind(kind), message)


def lookup(splits: Mapping[str, EpochMetrics], monitor: str) -> float:
    """The value of `<split>_<metric>` among this epoch's metrics."""
    split, _, name = monitor.partition("_")
    return float(splits[split].values[name])


class Stopper:
    def __init__(self, cfg: StopConfig, higher_is_better: bool = False):
        self.cfg = cfg
        self.higher_is_better = higher_is_better  # of stop.monitor (resolved from stop.mode by the run)
        self.best: float | None = None
        self.bad_epochs = 0
        self.train_losses: list[float] = []
        self.stopped: StopReason | None = None  # the reason, once the run has stopped early

    def update(self, splits: Mapping[str, EpochMetrics]) -> StopReason | None:
        """Record one epoch (its metrics by split); return why training should stop now, or None."""
        cfg = self.cfg
        if cfg.window:
            self.train_losses = (self.train_losses + [splits["train"].loss])[-cfg.window :]
            spread = max(self.train_losses) - min(self.train_losses)
            if len(self.train_losses) == cfg.window and spread <= cfg.threshold:
                return StopReason(
                    StopKind.CONVERGED,
                    f"converged: the last {cfg.window} train losses lie within {spread:.3g} "
                    f"<= stop.threshold={cfg.threshold}",
                )
        if cfg.patience:
            value = lookup(splits, cfg.monitor)
            score = value if self.higher_is_better else -value  # compared as "higher is better"
            if self.best is None or score > self.best + cfg.min_delta:
                self.best, self.bad_epochs = score, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= cfg.patience:
                    return StopReason(
                        StopKind.EARLY,
                        f"early stop: {cfg.monitor} did not improve by more than {cfg.min_delta} "
                        f"for {cfg.patience} epochs",
                    )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "train_losses": list(self.train_losses),
            "stopped": str(self.stopped) if self.stopped is not None else None,
            "stop_kind": self.stopped.kind.value if self.stopped is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.train_losses = list(state["train_losses"])
        self.stopped = StopReason.of_state(state["stopped"], state.get("stop_kind"))
