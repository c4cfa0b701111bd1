"""The hang watchdog's price, measured: the same training under torchrun x2 (gloo), with the watchdog and
the straggler figures on (the defaults), off (trainer.hang_timeout=0 trainer.straggler_ratio=0), and, with
--before, by another checkout of distrain (the code before the watchdog existed), taking turns.

    .venv/bin/python bench/watchdog.py                                 # xor and cnn, 7 rounds
    git worktree add --detach ../before 84ecd24                        # the commit before the watchdog
    .venv/bin/python bench/watchdog.py --before ../before --repeats 11

The figure is the training loop's own: each epoch's samples over its `train_time_s` (metrics.jsonl, rank
0's clock around the steps, the same measure bench/run.py uses), not the process's wall time (imports,
rendezvous and the process group's start-up are the same code on both sides and swamp a short run). Each
round runs every variant once, in a rotating order; "on / off" is the median of the per-round ratios of
each run's median epoch, so a slow phase of this machine hits both sides of a ratio alike; "best epochs"
compares the fastest epoch of all runs, what each side runs at when nothing else on the machine
interferes (on a shared 2-core VM, interference only ever slows a run down).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
OFF = ["trainer.hang_timeout=0", "trainer.straggler_ratio=0"]
# Per workload: more epochs than the speed bench's, so each run's loop lasts a few seconds.
WORKLOADS = {"xor": ["trainer.epochs=8"], "cnn": ["trainer.epochs=8"]}


def run(workload: str, code: Path, overrides: list[str], nproc: int) -> list[float]:
    """One torchrun training; its loop's samples per second in each epoch (train samples over its time)."""
    with tempfile.TemporaryDirectory(prefix="distrain-watchdog-") as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
        env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(code))
        cmd = [
            TORCHRUN,
            "--standalone",  # torchrun picks a free port (as bench/sharding.py)
            f"--nproc_per_node={nproc}",
            "-m",
            "distrain",
            "train",
            str(HERE / "configs" / f"{workload}.yaml"),
            f"run.dir={folder}/run",
            *WORKLOADS[workload],
            *overrides,
        ]
        done = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in Path(folder, "run", "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in records if "train_time_s" in r]
        if not epochs or not all(r.get("samples") for r in epochs):
            sys.exit(f"no train sample counts in {folder}/run/metrics.jsonl: {epochs[:1]}")
        return [r["samples"] / r["train_time_s"] for r in epochs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="xor,cnn")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--before", type=Path, help="another checkout of distrain: the code before the watchdog")
    args = parser.parse_args()
    variants: dict[str, tuple[Path, list[str]]] = {"on": (REPO, []), "off": (REPO, OFF)}
    if args.before is not None:
        variants["before"] = (args.before.resolve(), [])
    names = list(variants)
    for workload in args.workloads.split(","):
        rates: dict[str, list[float]] = {v: [] for v in names}  # each run's median epoch
        epochs: dict[str, list[float]] = {v: [] for v in names}  # every epoch of every run
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                code, overrides = variants[name]
                each = run(workload, code, overrides, args.nproc)
                rates[name].append(statistics.median(each))
                epochs[name] += each
            print(f"  {workload} round {r + 1}: " + ", ".join(f"{v} {rates[v][-1]:,.0f}" for v in names), flush=True)
        print(f"\n{workload}: torchrun x{args.nproc}, samples/s of the training loop, {args.repeats} rounds")
        print(f"  {'':7s} {'median run':>12s} {'best epoch':>12s}")
        for name in names:
            print(f"  {name:7s} {statistics.median(rates[name]):>12,.0f} {max(epochs[name]):>12,.0f}")
        for base in names[1:]:
            ratios = [a / b for a, b in zip(rates["on"], rates[base])]
            print(
                f"  on / {base}: {statistics.median(ratios):.3f} median of the rounds' ratios ({min(ratios):.3f} "
                f"to {max(ratios):.3f}); best epochs {max(epochs['on']) / max(epochs[base]):.3f}"
            )
        print(flush=True)


if __name__ == "__main__":
    main()
