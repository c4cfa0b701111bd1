"""Where exact mode's gradient sum spends its time (distrain/strategies/exact_sum.py), inside a bare
training loop: zero_grad, forward, loss, backward, then either the optimizer step on the gradients as
they are (plain) or the exact sum first (one chunk in one process, as the benchmark's distrain_exact
runs: every gradient rounded onto its grid), in interleaved rounds. Per step, median over the rounds:
the plain step, the exact step, and the sum's two parts (`chunk`, right after backward: the maxima;
the call: the grids, the rounding, the scaling back).

    .venv/bin/python bench/exact_sum.py [--rounds 7] [--steps 500]

Two models: XOR's 2-4-1 MLP (17 parameters, batch 128, one thread), summed by both layouts
(SmallExactSum, which exact_sum picks for it, and ExactSum, tensor by tensor), and the FashionMNIST
quickstart's 784-512-512-10 MLP (669k parameters, batch 64, two threads; ExactSum).
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
from torch import nn  # noqa: E402

from distrain.strategies.exact_sum import ExactSum, SmallExactSum  # noqa: E402


def one_round(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int, layout) -> dict[str, float]:
    """µs per step: the whole step, and (with a layout) the sum's chunk and call."""
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3)
    reduce = layout(params, 1) if layout else None
    parts = {"chunk": 0.0, "call": 0.0}
    start = time.perf_counter()
    for _ in range(steps):
        for p in params:
            p.grad = None
        loss_fn(model(x), y).backward()
        if reduce is not None:
            t0 = time.perf_counter()
            held = reduce.chunk([p.grad for p in params])
            for p in params:
                p.grad = None
            t1 = time.perf_counter()
            for p, grad in zip(params, reduce([held])):
                p.grad = grad
            parts["chunk"] += t1 - t0
            parts["call"] += time.perf_counter() - t1
        optimizer.step()
    out = {"step": time.perf_counter() - start}
    if reduce is not None:
        out.update(parts)
    return {k: v / steps * 1e6 for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    xor = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    workloads = [
        ("xor", xor, torch.rand(128, 2, generator=gen), torch.randint(0, 2, (128, 1), generator=gen).float(),
         F.binary_cross_entropy_with_logits, 1, [("SmallExactSum", SmallExactSum), ("ExactSum", ExactSum)]),
        ("fashion MLP", mlp, torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen),
         F.cross_entropy, 2, [("ExactSum", ExactSum)]),
    ]  # fmt: skip
    print(f"{args.steps} steps a run, {args.rounds} rounds, torch {torch.__version__}; µs per step (median)")
    for name, model, x, y, loss_fn, threads, layouts in workloads:
        torch.set_num_threads(threads)
        variants = [("plain", None), *layouts]
        for _, layout in variants:
            one_round(model, x, y, loss_fn, args.steps // 5, layout)  # warm-up
        runs: dict[str, list[dict[str, float]]] = {v: [] for v, _ in variants}
        for r in range(args.rounds):
            for v, layout in variants[r % len(variants) :] + variants[: r % len(variants)]:  # rotating order
                runs[v].append(one_round(model, x, y, loss_fn, args.steps, layout))
        plain = statistics.median(run["step"] for run in runs["plain"])
        print(
            f"{name} ({sum(p.numel() for p in model.parameters()):,} parameters, {threads} thread(s)): "
            f"plain {plain:.0f}"
        )
        for v, _ in layouts:
            med = {k: statistics.median(run[k] for run in runs[v]) for k in runs[v][0]}
            print(
                f"  {v:<14} step {med['step']:.0f} ({plain / med['step']:.2f}x plain): chunk {med['chunk']:.0f}, "
                f"call {med['call']:.0f}"
            )


if __name__ == "__main__":
    main()
