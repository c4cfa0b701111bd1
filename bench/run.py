"""distrain's speed benchmark: the same workloads trained by the bare-compute floor, the tutorial loop,
Lightning, Accelerate and distrain, alternating in one run; prints medians and ratios.

    bash bench/run.sh                      # sets up .venv with the peers, then runs this
    python bench/run.py --repeats 7 --workloads xor,cnn

Throughput: samples/s of the training loop (see bench/variants.py for what each variant times), median
over --repeats rounds; the variants take turns inside each round, in a rotating order, and the ratios
are medians of per-round ratios, so a slow phase of the machine hits every variant alike. Start-up: wall time of a whole short training process (imports, data,
model, 20,000 XOR samples), median of --startup-repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from bench.variants import VARIANTS, load_workload  # noqa: E402

PEERS = ["tutorial", "lightning", "accelerate"]


def throughput(workloads: list[str], variants: list[str], repeats: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name in workloads:
        w = load_workload(name, HERE / "configs")
        torch.set_num_threads(w.threads)
        VARIANTS["floor"](w)  # warm-up: first-touch allocations and kernel selection
        runs: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                samples, seconds = VARIANTS[v](w)
                runs[v].append(samples / seconds)
        results[name] = {v: statistics.median(runs[v]) for v in variants}
        print_table(name, w, results[name], runs)
    return results


def print_table(name: str, w, medians: dict[str, float], runs: dict[str, list[float]]) -> None:
    # Ratios are medians of the per-round ratios: a round's variants ran back to back, so a slow phase of
    # the machine (seen here: the same loop at half speed for seconds) cancels out of them.
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(runs[a], runs[b]))

    print(f"\n{name}: {w.samples} samples per run, batch {w.batch}, {w.threads} thread(s), "
          f"{len(next(iter(runs.values())))} rounds")
    print(f"  {'variant':<11} {'samples/s':>11} {'x floor':>8} {'spread':>8}")
    for v, value in medians.items():
        spread = (max(runs[v]) - min(runs[v])) / value
        x_floor = ratio(v, "floor") if "floor" in runs else float("nan")
        print(f"  {v:<11} {value:>11,.0f} {x_floor:>8.2f} {spread:>7.0%}")
    if "distrain" in medians:
        ratios = ", ".join(f"{ratio('distrain', p):.2f}x {p}" for p in PEERS if p in medians)
        print(f"  distrain = {ratios}")


STARTUP = {
    "distrain": [sys.executable, "-m", "distrain", "train", str(HERE / "configs" / "xor.yaml"),
                 "data.num_train=20000", "trainer.epochs=1", "run.dir={tmp}"],
    **{v: [sys.executable, str(HERE / "short.py"), v] for v in ["tutorial", "lightning", "accelerate"]},
}


def startup(variants: list[str], repeats: int) -> dict[str, float]:
    import tempfile

    walls: dict[str, list[float]] = {v: [] for v in variants if v in STARTUP}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(repeats):
        for v in walls:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [part.replace("{tmp}", tmp) for part in STARTUP[v]]
                started = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                walls[v].append(time.perf_counter() - started)
    medians = {v: statistics.median(t) for v, t in walls.items()}
    print(f"\nstart-up: whole process, imports included, 20,000 XOR samples, median of {repeats}")
    for v, value in medians.items():
        print(f"  {v:<11} {value:>6.2f} s")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="xor,cnn,resnet18")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--startup-repeats", type=int, default=3)
    args = parser.parse_args()
    import importlib.metadata as md

    versions = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "lightning", "accelerate")
                         if _installed(p))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), {platform.python_version()}, {versions}")
    variants = args.variants.split(",")
    throughput(args.workloads.split(","), variants, args.repeats)
    if args.startup_repeats:
        startup(variants, args.startup_repeats)


def _installed(package: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(package)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
