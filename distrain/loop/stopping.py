"""When to stop before trainer.epochs: early stopping on a monitored metric (patience, min_delta) and
the tutorials' convergence rule (the last `window` epoch train losses lie within `threshold`).

Every rank sees the same all-reduced epoch metrics, so every rank reaches the same verdict; the train loop
still makes them agree with one collective (`dist.any_true`) so that no rank can ever stop alone and leave
the others waiting in the next all-reduce. The state (best value, epochs without improvement, recent
losses, and whether the run already stopped) is saved in each checkpoint and restored on resume.
"""

from __future__ import annotations

from typing import Any, Mapping

from distrain.config.schema import StopConfig
from distrain.loop.steps import EpochMetrics


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
        self.stopped: str | None = None  # the reason, once the run has stopped early

    def update(self, splits: Mapping[str, EpochMetrics]) -> str | None:
        """Record one epoch (its metrics by split); return why training should stop now, or None."""
        cfg = self.cfg
        if cfg.window:
            self.train_losses = (self.train_losses + [splits["train"].loss])[-cfg.window :]
            spread = max(self.train_losses) - min(self.train_losses)
            if len(self.train_losses) == cfg.window and spread <= cfg.threshold:
                return (
                    f"converged: the last {cfg.window} train losses lie within {spread:.3g} "
                    f"<= stop.threshold={cfg.threshold}"
                )
        if cfg.patience:
            value = lookup(splits, cfg.monitor)
            score = value if self.higher_is_better else -value  # compared as "higher is better"
            if self.best is None or score > self.best + cfg.min_delta:
                self.best, self.bad_epochs = score, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= cfg.patience:
                    return (
                        f"early stop: {cfg.monitor} did not improve by more than {cfg.min_delta} "
                        f"for {cfg.patience} epochs"
                    )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "train_losses": list(self.train_losses),
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.train_losses, self.stopped = list(state["train_losses"]), state["stopped"]
