"""Where do metrics go? One `Reporter` per run fans them out: console, metrics.jsonl, the loggers that
log.loggers names (W&B, TensorBoard, CSV, your own: see loggers.py), plots.

    reporter = Reporter(cfg, ctx, run_dir, model, start_step=..., total_steps=..., directions=...)
    window = dist.all_reduce_sum(reporter.window(meter))        # the caller reduces, at log steps
    reporter.after_step(global_step, meter, lr, window)          # every rank, after a step where wants_step()
    reporter.log_epoch(epoch, global_step, {"train": ..., "val": ..., "test": ...}, time_s, lr, train_time_s)
    reporter.log_scalars(global_step, {"name": value})           # any named scalars, to every logger
    reporter.close(plots=True)

Step metrics (every log.every_steps steps): the mean train loss and accuracy over the steps since the
last log, summed over all ranks by the caller (the Reporter runs no collective), the learning rate,
samples/s, step time and the gradient norm. Values reach the host only at these steps, never inside
the step. Only global rank 0 prints, writes files or calls the loggers; the others log warnings and
errors only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distrain.config.schema import Config
from distrain.launch.dist import DistContext
from distrain.reporting.figures import EpochMetrics, Meter
from distrain.reporting.history import RECORD_KEYS, MetricsLog
from distrain.reporting.loggers import build_loggers, check_loggers

log = logging.getLogger("distrain")


class GradNormHooks:
    """Per-parameter gradient norms through tensor hooks (the tutorials' `register_hook`), recorded only
    for steps the reporter will log: an armed hook stores a device scalar; nothing syncs in the step."""

    def __init__(self, model: nn.Module):
        self.armed = False
        self.norms: dict[str, torch.Tensor] = {}
        self.handles = [p.register_hook(self._hook(name)) for name, p in model.named_parameters() if p.requires_grad]

    def _hook(self, name: str):
        def record(grad: torch.Tensor) -> None:
            if self.armed:
                self.norms[name] = grad.detach().norm()

        return record

    def take(self) -> dict[str, float]:
        values = {f"grad_norm/{name}": float(v) for name, v in self.norms.items()}
        self.norms.clear()
        return values

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def total_grad_norm(model: nn.Module) -> float:
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


class Reporter:
    def __init__(
        self,
        run_cfg: Config,
        ctx: DistContext,
        run_dir: Path,
        model: nn.Module,
        *,
        start_step: int,
        total_steps: int,
        directions: dict[str, Any] | None = None,
    ):
        cfg = run_cfg.log
        self.cfg, self.ctx, self.run_dir, self.model = cfg, ctx, run_dir, model
        self.directions = directions or {}  # metric name -> its torchmetrics object (higher_is_better)
        self.every = cfg.every_steps
        self.metrics = MetricsLog(run_dir, is_main=ctx.is_main)
        self.hooks = GradNormHooks(model) if cfg.grad_norms else None
        if self.hooks:
            self.hooks.armed = (start_step + 1) % self.every == 0
        self.window_start: torch.Tensor | None = None
        self.window_time = time.perf_counter()
        self.window_step = start_step
        self.loggers: list[Any] = []
        self.bar = None
        self._console = contextlib.ExitStack()  # the log lines' redirection through the bar, undone at close
        check_loggers(cfg.loggers)  # every rank: a logger that cannot be imported stops them all alike
        if ctx.is_main:
            self.loggers = build_loggers(run_cfg, run_dir, start_step)
            show_bar = cfg.progress_bar == "always" or (cfg.progress_bar == "auto" and sys.stdout.isatty())
            if show_bar:
                from tqdm import tqdm
                from tqdm.contrib.logging import logging_redirect_tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
                # distrain's log lines (epochs, saves, warnings) go through the bar's writer while it shows:
                # printed past it, a line would split the bar in two (`...samples_s=289015]s` `aved ...`).
                self._console.enter_context(logging_redirect_tqdm(loggers=[log], tqdm_class=tqdm))
        self.best: dict[str, float] = {}
        self.comm_start: dict[str, float] = {}  # the strategy's comm figures at the last log step

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Named scalars at a global step, to every logger (W&B, TensorBoard, CSV, yours). Any rank may
        call it; global rank 0 alone writes (values are rank 0's: reduce first what must cover all ranks)."""
        if not self.ctx.is_main:
            return
        for logger in self.loggers:
            logger.log_scalars(step, values)

    def start_epoch(self, meter: Meter, global_step: int, comm: dict[str, float] | None = None) -> None:
        """A new window at the epoch's start (`comm`: the strategy's exchange figures now, its baseline)."""
        self.window_start = meter.totals().clone()
        self.window_time, self.window_step = time.perf_counter(), global_step
        self.comm_start = dict(comm or {})

    def wants_step(self, global_step: int) -> bool:
        """Whether `after_step` has work after this step: a log step, or arming the gradient-norm hooks
        for the next one. The loop asks this (cheap) rather than calling after_step every step."""
        return global_step % self.every == 0 or (self.hooks is not None and (global_step + 1) % self.every == 0)

    def is_log_step(self, global_step: int) -> bool:
        return global_step % self.every == 0

    def window(self, meter: Meter) -> torch.Tensor:
        """This rank's train sums since the last log step (the caller sums them over the ranks)."""
        return meter.totals() - self.window_start

    def after_step(
        self,
        global_step: int,
        meter: Meter,
        lr: list[float],
        window: torch.Tensor | None,
        comm: dict[str, float] | None = None,
    ) -> None:
        """Every rank calls it when `wants_step`; at log steps with `window`, the window's sums over all ranks,
        and `comm`: the strategy's cumulative exchange figures on this rank (Strategy.comm_figures)."""
        if not self.is_log_step(global_step):
            if self.hooks:
                self.hooks.armed = (global_step + 1) % self.every == 0
            return
        if self.bar is not None:
            self.bar.update(global_step - self.bar.n)
        totals = meter.totals()
        *sums, count = meter.sums(window).tolist()
        elapsed = time.perf_counter() - self.window_time
        values = {f"train/step_{name}": value / max(count, 1) for name, value in zip(meter.names, sums)}
        values.update(
            {
                **group_rates(lr),
                "samples_per_s": count / elapsed,
                "step_time_s": elapsed / max(global_step - self.window_step, 1),
                "grad_norm": total_grad_norm(self.model),
            }
        )
        if self.hooks:
            values.update(self.hooks.take())
            self.hooks.armed = False
        values.update(self._comm_window(comm or {}, count, global_step - self.window_step))
        if self.ctx.is_main:
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{values['train/step_loss']:.4f}", samples_s=f"{values['samples_per_s']:.0f}"
                )
            else:
                log.info(
                    "step %d | loss %.4f | lr %.3g | %.0f samples/s | %.2f ms/step | grad norm %.3g%s",
                    global_step,
                    values["train/step_loss"],
                    lr[0],
                    values["samples_per_s"],
                    1000 * values["step_time_s"],
                    values["grad_norm"],
                    _comm_text(values),
                )
        self.log_scalars(global_step, values)
        self.window_start = totals.clone()
        self.window_time, self.window_step = time.perf_counter(), global_step

    def _comm_window(self, comm: dict[str, float], samples: float, steps: int) -> dict[str, float]:
        """The window's share of the exchange: all ranks' payload bytes per sample (this rank's times the
        world size: every rank sends alike) and this rank's wait per step."""
        if not comm:
            return {}
        start, self.comm_start = self.comm_start, dict(comm)
        out = {}
        if "comm_bytes" in comm:
            sent = comm["comm_bytes"] - start.get("comm_bytes", 0.0)
            out["comm_bytes_per_sample"] = sent * self.ctx.world_size / max(samples, 1)
        if "comm_wait_s" in comm:
            out["comm_wait_s_per_step"] = (comm["comm_wait_s"] - start.get("comm_wait_s", 0.0)) / max(steps, 1)
        return out

    def log_epoch(
        self,
        epoch: int,
        global_step: int,
        splits: dict[str, EpochMetrics],
        time_s: float,
        lr: list[float],
        train_time_s: float,
        skipped_steps: int | None = None,
        logged: dict[str, float] | None = None,
    ) -> None:
        # Training throughput: the samples of this epoch's steps over the time of the steps (not evaluation).
        train = splits["train"]
        extra: dict[str, float] = {
            "train_time_s": train_time_s,
            "samples_per_s": train.samples / train_time_s if train_time_s > 0 else 0.0,
        }
        extra.update({name: value for name, value in group_rates(lr).items() if name != "lr"})
        extra.update(logged or {})  # the callbacks' run.log values of the epoch (the last per name)
        if skipped_steps is not None:
            extra["skipped_steps"] = skipped_steps  # in the run so far (trainer.on_nonfinite: skip_step)
        if self.ctx.device.type == "cuda":
            extra["peak_cuda_mem_gb"] = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
        if not self.ctx.is_main:
            return
        if self.bar is not None:
            self.bar.update(global_step - self.bar.n)
            self.bar.clear()
        records = self.metrics.log_epoch(epoch, global_step, splits, time_s, lr=lr[0], extra=extra)
        if self.bar is not None:
            self.bar.refresh()
        for split, m in splits.items():
            self._track_best(split, m.values)
        values = {
            f"{split}/{name}": value
            for split, m in splits.items()
            for name, value in m.values.items()
            if isinstance(value, (int, float))  # scalars only: a confusion matrix stays in metrics.jsonl
        }
        self.log_scalars(
            global_step,
            {
                "epoch": epoch,
                **values,
                "epoch_lr": lr[0],
                "epoch_time_s": time_s,
                **{f"epoch_{k}": v for k, v in extra.items()},
            },
        )
        for logger in self.loggers:
            if hasattr(logger, "log_epoch"):
                logger.log_epoch(epoch, global_step, records)
            if hasattr(logger, "log_summary"):
                logger.log_summary(self.best)

    def _track_best(self, split: str, values: dict) -> None:
        """best/<split>_<metric> over the epochs so far (val and test; losses and errors: the lowest)."""
        if split == "train":
            return
        from distrain.reporting.figures import higher_is_better

        for name, value in values.items():
            if not isinstance(value, (int, float)):
                continue
            key = f"best/{split}_{name}"
            better = max if higher_is_better(name, self.directions.get(name)) else min
            self.best[key] = better(value, self.best.get(key, value))

    def drop_from_epoch(self, epoch: int) -> None:
        """On resume: forget records the checkpoint does not cover, and carry the best test figures over."""
        self.metrics.drop_from_epoch(epoch)
        if self.ctx.is_main and self.metrics.path.exists():
            from distrain.reporting.history import read_metrics

            for record in read_metrics(self.run_dir):
                values = {k: v for k, v in record.items() if k not in RECORD_KEYS}
                self._track_best(record["split"], values)

    def close(self, *, plots: bool) -> None:
        if self.hooks:
            self.hooks.remove()
        if not self.ctx.is_main:
            return
        if self.bar is not None:
            self.bar.close()
            self._console.close()
        try:
            if plots and self.metrics.path.exists():
                from distrain.reporting.plots import plot_runs

                for path in plot_runs([self.run_dir], self.run_dir / "plots"):
                    log.info("wrote %s", path)
        finally:
            for logger in self.loggers:
                if hasattr(logger, "close"):
                    logger.close()


def group_rates(lrs: list[float]) -> dict[str, float]:
    """Each parameter group's learning rate by its logged name: lr (the first group), lr/group1, ..."""
    return {"lr" if i == 0 else f"lr/group{i}": value for i, value in enumerate(lrs)}


def _comm_text(values: dict[str, float]) -> str:
    """ " | comm 94.1 KB/sample, wait 12.3 ms/step" when the strategy measures its exchange, else ""."""
    if "comm_bytes_per_sample" not in values:
        return ""
    text = f" | comm {_bytes(values['comm_bytes_per_sample'])}/sample"
    if "comm_wait_s_per_step" in values:
        text += f", wait {1000 * values['comm_wait_s_per_step']:.3g} ms/step"
    return text


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} B"
