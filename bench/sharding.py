"""strategy fsdp against ddp, side by side in one run: per-rank memory, and the training time a checkpoint
save costs, synchronous and in the background (checkpoint.async_save).

    .venv/bin/python bench/sharding.py                # configs/wide_mlp_fsdp.yaml: 70M parameters, AdamW
    .venv/bin/python bench/sharding.py --ranks 2,3 --steps 8 --stall-repeats 2

Memory: for each number of ranks, `ddp` then `fsdp` train the config for --steps optimizer steps under
torchrun (gloo, CPU, one thread per rank). Each rank measures, in its own process (bench/sharding_worker.py):
- baseline: resident memory after `import torch`, the process group and `import distrain`, before the run;
- peak: the process's peak resident memory (getrusage ru_maxrss) over the whole run, model build included;
- state: bytes of the tensors the rank holds right after an optimizer step: parameters, gradients and
  optimizer state, a storage shared by several views (DDP's gradient buckets) counted once, sharded
  tensors by their local shard;
- largest unit: the parameters of the largest fsdp unit (gathered whole during its forward and backward).
Peak resident memory also counts what the allocator keeps after a free: --mmap-threshold 65536 makes
glibc return freed blocks above 64 KiB at once, so the peak follows the live tensors.
The table shows the rank with the highest peak and the ratios fsdp / ddp.

Checkpoint stall: 1 process of ddp (a .pt), 1 and 2 ranks of fsdp (sharded checkpoints), each trained for
--stall-steps steps with a save every --stall-every steps, synchronous and in the background
(checkpoint.async_save), in alternating rounds (--stall-repeats). What a save costs is read from each
run's own step times (lost_per_save): the steps from a save to one past its write's end, against the run's
other steps. Why not the difference of two runs' totals, one without saves: the VM's speed drifts from one
run to the next by more than a save costs (16 steps of fsdp x2 took 41 to 48 s here with no save at all).
"x sync" is the background save's lost time over the synchronous one's. "staging" is the training
thread's own share of a background save (the state dicts, the copy into the staging buffers, the
hand-over), "wait" its wait for the previous write (when saves come faster than a write); the rest of a
background save's cost is its writer's CPU taken from training ("writer cpu"). "last wait" is the wait
for the last write when fit ends (once per run).
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
MB = 1 / 2**20
EXTRA_ENV: dict[str, str] = {}


def run(strategy: str, nproc: int, steps: int, config: str, *overrides: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks"
        out.mkdir()
        env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", **EXTRA_ENV)
        cmd = [
            TORCHRUN,
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(HERE / "sharding_worker.py"),
            config,
            strategy,
            str(steps),
            str(Path(tmp) / "run"),
            str(out),
            *overrides,
        ]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        return [json.loads(p.read_text()) for p in sorted(out.iterdir())]


def memory(ranks: list[int], steps: int, config: str) -> None:
    allocator = (
        f"glibc malloc, MALLOC_MMAP_THRESHOLD_={EXTRA_ENV['MALLOC_MMAP_THRESHOLD_']}"
        if EXTRA_ENV
        else "glibc malloc, default thresholds"
    )
    print(f"memory: {config}, {steps} steps, gloo on CPU, {allocator}; MiB per rank (the rank with the highest peak)")
    print(
        f"{'ranks':>5} {'strategy':>8} {'baseline':>9} {'peak':>7} {'peak-base':>9} {'state':>7} {'unit':>6} "
        f"{'state x ddp':>11} {'peak-base x ddp':>15}"
    )
    for nproc in ranks:
        rows = {s: run(s, nproc, steps, config) for s in ("ddp", "fsdp")}
        top = {s: max(r, key=lambda x: x["peak"] - x["baseline"]) for s, r in rows.items()}
        ddp_above = top["ddp"]["peak"] - top["ddp"]["baseline"]
        ddp_state = max(r["state"] for r in rows["ddp"])
        for s in ("ddp", "fsdp"):
            t = top[s]
            above, state = t["peak"] - t["baseline"], max(r["state"] for r in rows[s])
            print(
                f"{nproc:>5} {s:>8} {t['baseline'] * MB:>9.0f} {t['peak'] * MB:>7.0f} {above * MB:>9.0f} "
                f"{state * MB:>7.0f} {t['largest_unit'] * MB:>6.0f} {state / ddp_state:>11.2f} "
                f"{above / ddp_above:>15.2f}"
            )


def lost_per_save(rank0: dict, every: int) -> tuple[float, float]:
    """(the run's step time, the training time a save cost): from one run's own step times, so a VM that
    runs slower or faster from one run to the next moves neither. A save's window is its step through the
    step after the one in which its write ended (the write's CPU, and what it leaves behind: caches, the
    disk); the step time is the median of the steps outside every window (the first, with its warm-up,
    left out); a save's cost is its window's time over that many steps' time. Saves whose window reaches the
    last step are left out (the run's end cuts it short)."""
    ends = rank0["step_ends"]
    steps = [b - a for a, b in zip([0.0, *ends], ends)]  # steps[i]: optimizer step i + 1, its save included
    write_ends = sorted(end for _, end, _ in rank0["writes"])
    windows = []
    for k, save_step in enumerate(range(every, len(ends) + 1, every)):
        done = write_ends[k] if k < len(write_ends) else ends[save_step - 1]  # sync: the save's own step
        last = next((i + 1 for i, end in enumerate(ends) if end >= done), len(ends))
        if last + 1 < len(ends):
            windows.append(range(save_step, last + 2))  # steps, numbered from 1
    inside = {i for w in windows for i in w}
    step = statistics.median(steps[i - 1] for i in range(2, len(ends) + 1) if i not in inside)
    return step, statistics.mean(sum(steps[i - 1] - step for i in w) for w in windows)


def stall(steps: int, every: int, repeats: int, config: str, setups: list[str]) -> None:
    print(f"\ncheckpoint stall: {config}, {steps} steps, a save every {every}; seconds, median of {repeats} rounds")
    print("  lost/save: a save's training time lost, from each run's own step times (see lost_per_save);")
    print("  staging: the training thread's own share of a background save (in save(), less wait: for the")
    print("  previous write); write: a background write's wall time, and its writer thread's CPU")
    print(
        f"{'setup':>10} {'step':>5} {'lost/save sync':>14} {'lost/save bg':>12} {'x sync':>6} {'staging':>7} "
        f"{'wait':>5} {'write':>5} {'writer cpu':>10} {'last wait':>9}"
    )
    # fsdp x1: the sharded checkpoint's writer with a core free beside the compute, as ddp x1's .pt writer;
    # fsdp x2 computes on both cores of a 2-core machine, so there its writers take their CPU from training.
    for strategy, nproc in ((name, int(ranks)) for name, ranks in (setup.split("x") for setup in setups)):
        rounds: dict[str, list[dict]] = {"sync": [], "async": []}
        for _ in range(repeats):  # alternating, so a slow phase of the machine falls on both
            for variant, extra in (
                ("sync", (f"checkpoint.every_steps={every}",)),
                ("async", (f"checkpoint.every_steps={every}", "checkpoint.async_save=true")),
            ):
                ranks = run(strategy, nproc, steps, config, *extra)
                saves = steps // every
                step, lost = lost_per_save(ranks[0], every)
                writes = [w for r in ranks for w in r["writes"]]
                rounds[variant].append(
                    {
                        "step": step,
                        "lost": lost,
                        "in_save": max(r["save_call_seconds"] for r in ranks) / saves,
                        "wait": max(r["wait_seconds"] for r in ranks) / saves,
                        "write": statistics.mean(end - begun for begun, end, _ in writes) if writes else 0.0,
                        "cpu": statistics.mean(cpu for _, _, cpu in writes) if writes else 0.0,
                        "drain": max(r["drain_seconds"] for r in ranks),
                    }
                )

        def med(variant: str, key: str, rounds: dict = rounds) -> float:
            return statistics.median(r[key] for r in rounds[variant])

        sync, bg = med("sync", "lost"), med("async", "lost")
        print(
            f"{f'{strategy} x{nproc}':>10} {med('sync', 'step'):>5.2f} {sync:>14.2f} {bg:>12.2f} {bg / sync:>6.2f} "
            f"{med('async', 'in_save') - med('async', 'wait'):>7.2f} {med('async', 'wait'):>5.2f} "
            f"{med('async', 'write'):>5.2f} {med('async', 'cpu'):>10.2f} {med('async', 'drain'):>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,3", help="numbers of ranks for the memory table, e.g. 2,3")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per memory run")
    parser.add_argument("--stall-steps", type=int, default=20)
    parser.add_argument("--stall-every", type=int, default=5, help="steps between saves (at least 4)")
    parser.add_argument("--stall-setups", default="ddpx1,fsdpx1,fsdpx2", help="STRATEGYxRANKS, comma-separated")
    parser.add_argument("--stall-repeats", type=int, default=2)
    parser.add_argument("--config", default="configs/wide_mlp_fsdp.yaml")
    parser.add_argument("--skip", choices=["memory", "stall"], help="leave one part out")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        metavar="BYTES",
        help="MALLOC_MMAP_THRESHOLD_ for the ranks: blocks above it are returned to the system "
        "when freed, so peak resident memory follows the live tensors (glibc's default "
        "threshold grows to 32 MiB and freed blocks below it stay resident)",
    )
    args = parser.parse_args()
    if args.stall_every < 4 or args.stall_steps < 2 * args.stall_every:
        parser.error(
            "--stall-every must be at least 4 (steps between the saves' windows give the step time), "
            "and --stall-steps at least twice it"
        )
    if args.mmap_threshold:
        EXTRA_ENV["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    if args.skip != "memory":
        memory([int(n) for n in args.ranks.split(",")], args.steps, args.config)
    if args.skip != "stall":
        stall(args.stall_steps, args.stall_every, args.stall_repeats, args.config, args.stall_setups.split(","))


if __name__ == "__main__":
    main()
