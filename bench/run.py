"""distrain's speed benchmark: the same workloads trained by the bare-compute floor, the tutorial loop,
Lightning, Accelerate and distrain, alternating in one run; prints medians and ratios.

    bash bench/run.sh                      # sets up .venv with the peers, then runs this
    python bench/run.py --repeats 7 --workloads xor,cnn

Throughput: samples/s of the training loop (see bench/variants.py for what each variant times), median
over --repeats rounds; the variants take turns inside each round, in a rotating order, each right after
a floor run of its own. "x floor" is the median of each run's ratio to that adjacent floor run, and
distrain's ratio to a peer the median of the per-round ratios of their "x floor" figures, so a slow phase
of the machine hits both sides of every ratio alike. Start-up: wall time of a whole short training
process (imports, data, model, 20,000 XOR samples), median of --startup-repeats.
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


def throughput(
    workloads: list[str], variants: list[str], repeats: int, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name in workloads:
        w = load_workload(name, HERE / "configs", device=device)
        torch.set_num_threads(w.threads)
        VARIANTS["floor"](w)  # warm-up: first-touch allocations and kernel selection
        runs: dict[str, list[float]] = {v: [] for v in variants}
        x_floor: dict[str, list[float]] = {v: [] for v in variants}  # each run over the floor run just before it
        others = [v for v in variants if v != "floor"]
        for r in range(repeats):
            for v in others[r % len(others) :] + others[: r % len(others)]:
                if "floor" in variants:
                    # A floor run right before each variant: this VM has slow phases lasting seconds, and
                    # a ratio of two runs seconds apart cancels them out (run-to-run spread: up to 2x).
                    runs["floor"].append(rate(VARIANTS["floor"](w)))
                    x_floor["floor"].append(1.0)
                runs[v].append(rate(VARIANTS[v](w)))
                if "floor" in variants:
                    x_floor[v].append(runs[v][-1] / runs["floor"][-1])
        results[name] = {v: statistics.median(runs[v]) for v in variants}
        print_table(name, w, results[name], runs, x_floor)
    return results


def rate(result: tuple[int, float]) -> float:
    samples, seconds = result
    return samples / seconds


def print_table(
    name: str, w, medians: dict[str, float], runs: dict[str, list[float]], x_floor: dict[str, list[float]]
) -> None:
    def ratio(a: str, b: str) -> float:
        # Round by round, each variant relative to its own adjacent floor run (see throughput).
        return statistics.median(x / y for x, y in zip(x_floor[a], x_floor[b]))

    has_floor = "floor" in runs
    print(
        f"\n{name}: {w.samples} samples per run, batch {w.batch}, {w.threads} thread(s), "
        f"{len(runs[next(v for v in runs if v != 'floor')])} rounds"
    )
    print(f"  {'variant':<11} {'samples/s':>11} {'x floor':>8} {'spread':>8}")
    for v, value in medians.items():
        spread = (max(runs[v]) - min(runs[v])) / value
        x = statistics.median(x_floor[v]) if has_floor else float("nan")
        print(f"  {v:<11} {value:>11,.0f} {x:>8.2f} {spread:>7.0%}")
    if "distrain" in medians and has_floor:
        ratios = ", ".join(f"{ratio('distrain', p):.2f}x {p}" for p in PEERS if p in medians)
        if ratios:  # no peer (Lightning, Accelerate) ran in this workload: nothing to compare with
            print(f"  distrain = {ratios}")
    if "distrain_api" in medians and "distrain" in medians and has_floor:
        api = ratio("distrain_api", "distrain")
        print(f"  distrain_api (distrain.fit with a user nn.Module) = {api:.2f}x distrain")
    if "distrain_step" in medians and "distrain_api" in medians and has_floor:
        own = ratio("distrain_step", "distrain_api")
        print(f"  distrain_step (fit(step=...), the user's own step) = {own:.2f}x distrain_api")
    if "distrain_stream" in medians and "distrain_api" in medians and has_floor:
        stream = ratio("distrain_stream", "distrain_api")
        print(f"  distrain_stream (the training set streamed from file shards) = {stream:.2f}x distrain_api")
    if "distrain_exact" in medians and "distrain" in medians and has_floor:
        exact = ratio("distrain_exact", "distrain")
        print(f"  distrain_exact (trainer.exact, chunk = the batch) = {exact:.2f}x distrain")


STARTUP = {
    "distrain": [
        sys.executable,
        "-m",
        "distrain",
        "train",
        str(HERE / "configs" / "xor.yaml"),
        "data.args.num_train=20000",
        "trainer.epochs=1",
        "run.dir={tmp}",
    ],
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
    parser.add_argument("--workloads", default="xor,cnn,mnist,fashion,resnet18")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: every variant on one GPU (the GPU's name is printed)",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    import importlib.metadata as md

    versions = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "lightning", "accelerate") if _installed(p))
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s){gpu}, {platform.python_version()}, {versions}")
    variants = args.variants.split(",")
    throughput(args.workloads.split(","), variants, args.repeats, args.device)
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
