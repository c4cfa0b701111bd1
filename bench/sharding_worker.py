"""One rank of bench/sharding.py: train CONFIG with STRATEGY for STEPS steps; write this rank's figures
(memory; the end of every optimizer step, its save included; the training thread's time in save(); each
background write's start, end and CPU) to OUT_DIR/rank<R>.json.

    torchrun ... bench/sharding_worker.py CONFIG STRATEGY STEPS RUN_DIR OUT_DIR [key=value ...]
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of this rank's parameters, gradients and optimizer state; a storage shared by several views
    (DDP's gradient buckets) counted once; sharded tensors by their local shard."""
    from distrain.strategies.fsdp import local

    storages: dict[int, int] = {}
    for p in model.parameters():
        for t in [p, p.grad, *(v for v in optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor))]:
            if t is not None and t.dim() > 0:
                storage = local(t).untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def main() -> None:
    config, strategy, steps, run_dir, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    overrides = sys.argv[6:]
    dist.init_process_group("gloo")  # distrain reuses a group that exists
    import distrain
    import distrain.checkpoint.background
    import distrain.checkpoint.saver
    import distrain.loop.trainer
    from distrain.strategies.fsdp import choose_units

    world = dist.get_world_size()
    batch = 16 * world
    cfg = distrain.load_config(
        config,
        [
            f"strategy={strategy}",
            f"run.dir={run_dir}",
            "trainer.epochs=1",
            f"data.args.num_train={steps * batch}",
            "data.args.num_test=64",
            f"data.global_batch_size={batch}",
            "checkpoint.every_epochs=0",
            "checkpoint.resume=never",
            "log.plots=false",
            "wandb.mode=disabled",
            "log.every_steps=1000",
            *overrides,
        ],
    )
    baseline = resident()
    figures: dict[str, float] = {}
    trainer, saver = distrain.loop.trainer.Trainer, distrain.checkpoint.saver.Saver
    original, original_save, original_close = trainer.maybe_save_step, trainer.save, saver.close
    clock = {"started": 0.0}
    figures["save_call_seconds"] = figures["drain_seconds"] = 0.0
    figures["step_ends"], figures["writes"] = [], []

    def measure_then_save(self):  # runs after every optimizer step, before the next zero_grad
        if self.state.progress.global_step == steps:
            figures["state"] = held_bytes(self.state.model, self.state.optimizer)
            figures["resident_at_step"] = resident()
            figures["peak_by_step"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            units = choose_units(self.state.model, self.cfg.fsdp) if strategy == "fsdp" else []
            figures["largest_unit"] = max(
                (sum(p.numel() * p.element_size() for p in u.parameters()) for u in units), default=0
            )
        saved = original(self)
        figures["step_ends"].append(time.perf_counter() - clock["started"])  # the step and its save (or staging)
        return saved

    def timed(name, method):
        def call(self, *args, **kwargs):
            begun = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                figures[name] += time.perf_counter() - begun

        return call

    trainer.maybe_save_step = measure_then_save
    timed_save = timed("save_call_seconds", original_save)  # the training thread in save()

    def save(self, *args, **kwargs):
        clock["in_save"] = True
        try:
            return timed_save(self, *args, **kwargs)
        finally:
            clock["in_save"] = False

    trainer.save = save
    # Of that, the wait for the previous background write (when a save comes before the last write ended);
    # the rest is the training thread's own share (state dicts, the staging copy, the hand-over).
    figures["wait_seconds"] = 0.0
    saves = distrain.checkpoint.background.BackgroundSaves
    original_wait = saves.wait

    def wait(self):
        begun = time.perf_counter()
        try:
            return original_wait(self)
        finally:
            if clock.get("in_save"):
                figures["wait_seconds"] += time.perf_counter() - begun

    saves.wait = wait
    original_write = saves._write

    def write(self, *args):  # in the writer thread: when each background write ran, and its CPU
        begun, cpu = time.perf_counter(), time.thread_time()
        try:
            return original_write(self, *args)
        finally:
            ended = time.perf_counter()
            figures["writes"].append([begun - clock["started"], ended - clock["started"], time.thread_time() - cpu])

    saves._write = write
    saver.close = timed("drain_seconds", original_close)  # the wait for the last write
    clock["started"] = time.perf_counter()
    distrain.fit(cfg)
    figures["fit_seconds"] = time.perf_counter() - clock["started"]  # floats among the byte counts
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out, f"rank{dist.get_rank()}.json").write_text(
        json.dumps({"rank": dist.get_rank(), "baseline": baseline, "peak": peak, **figures})
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
