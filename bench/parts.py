"""Where the XOR step's time goes: the parts of distrain's step that differ from the floor, each timed
against its alternative in interleaved rounds (median per step). The docs' Performance page
(docs/pages/performance.md) quotes these.

    .venv/bin/python bench/parts.py [--rounds 15]

- zero_grad: torch's Optimizer.zero_grad (inside a profiler record_function) vs distrain.optim.zero_grad.
- targets: the tutorial's BCE step (squeeze + cast per step) vs distrain's targets prepared once.
- meter: a bare step vs the same step handing its logits to distrain's TrainMeter (flushed every epoch).
- shuffle: per epoch, distrain's gather (randperm, one index_select per tensor, a view per step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.variants import load_workload  # noqa: E402
from distrain.data import build_train_batches  # noqa: E402
from distrain.data.batches import BatchSetup  # noqa: E402
from distrain.loop.meters import TrainMeter  # noqa: E402
from distrain.loop.objective import build_objective  # noqa: E402
from distrain.loop.optim import zero_grad  # noqa: E402

STEPS = 200  # steps per timed chunk; chunks of the two sides alternate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    w = load_workload("xor", HERE / "configs")
    objective = build_objective(w.cfg.loss, w.info, model_outputs=1)
    x_all, y_all = w.data.tensors
    xs, ys = x_all[: STEPS * w.batch].split(w.batch), y_all[: STEPS * w.batch].split(w.batch)
    prepared = objective.prepare_targets(y_all[: STEPS * w.batch]).split(w.batch)

    def step_loop(clear, loss, targets, meter=None):
        model = w.model()
        optimizer = w.optimizer(model)

        def run():
            for x, y in zip(xs, targets):
                clear(optimizer)
                logits = model(x)
                loss(logits, y).backward()
                if meter is not None:
                    meter.add(logits, y)
                optimizer.step()
            if meter is not None:
                meter.totals()

        return run

    torch_clear = lambda opt: opt.zero_grad(set_to_none=True)  # noqa: E731
    tutorial_loss = lambda logits, y: F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float())  # noqa: E731
    distrain_loss = objective.mean_fn  # the step's loss for an even share: BCE's mean, one kernel
    pairs = {
        "zero_grad": (step_loop(torch_clear, tutorial_loss, ys), step_loop(zero_grad, tutorial_loss, ys)),
        "targets": (step_loop(zero_grad, tutorial_loss, ys), step_loop(zero_grad, distrain_loss, prepared)),
        "meter": (
            step_loop(zero_grad, distrain_loss, prepared),
            step_loop(zero_grad, distrain_loss, prepared, TrainMeter(objective, torch.device("cpu"))),
        ),
    }
    print(f"XOR step parts, 1 thread, median over {args.rounds} interleaved rounds of {STEPS} steps")
    for name, (before, after) in pairs.items():
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(args.rounds):
            for side, run in zip(times, (before, after)):
                started = time.perf_counter()
                run()
                side.append((time.perf_counter() - started) / STEPS * 1e6)
        a, b = statistics.median(times[0]), statistics.median(times[1])
        print(f"  {name:<10} {a:7.1f} -> {b:7.1f} us per step ({b - a:+.1f} us, {b / a - 1:+.1%})")

    setup = BatchSetup(rank=0, world_size=1, device=torch.device("cpu"), seed=0, loader="tensor")
    batches = build_train_batches(w.data, setup, global_batch_size=w.batch, shuffle=True)
    gathers = []
    for epoch in range(args.rounds):
        batches.set_epoch(epoch)
        started = time.perf_counter()
        next(iter(batches))  # the first batch pays the epoch's randperm, gather and views
        gathers.append((time.perf_counter() - started) * 1e3)
    print(
        f"  shuffle    {statistics.median(gathers):.2f} ms per epoch of {batches.num_steps} steps "
        f"(randperm + gather + views, in isolation: warm caches)"
    )


if __name__ == "__main__":
    main()
