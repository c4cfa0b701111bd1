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
--stall-steps steps with no saves, with a save every --stall-every steps, and with the same saves in the
background; the lost time per save is (time to the last optimizer step and its save - the same without
saves) / saves, median of --stall-repeats alternating rounds; "x sync" is the background save's lost time
over the synchronous one's; "in save()" is the training thread's time in the save call per save, split into
"staging" (its own share: the state dicts, the copy into the staging buffers, the hand-over to the writer)
and "wait" (for the previous write, when saves come faster than a write); the rest of a background save's
lost time is the writer's CPU taken from training.
The wait for the last background write when fit ends ("last wait", once per run, not per save) is shown
apart, and "fit x sync" is the same ratio over whole fits, that wait included.
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


def stall(steps: int, every: int, repeats: int, config: str, setups: list[str]) -> None:
    saves = steps // every
    print(f"\ncheckpoint stall: {config}, {steps} steps, a save every {every} ({saves} saves); seconds")
    print("  loop: start of fit to the last optimizer step and its save; fit: the whole fit, with its")
    print("  wait for the last background write; in save(): the training thread inside save() per save, of which")
    print("  staging (its own share) and wait (for the previous write)")
    print(
        f"{'setup':>14} {'loop none':>9} {'sync':>6} {'bg':>6} {'lost/save sync':>14} {'lost/save bg':>12} "
        f"{'x sync':>6} {'in save() bg':>12} {'staging':>7} {'wait':>5} {'last wait':>9} {'fit x sync':>10}"
    )
    # fsdp x1: the sharded checkpoint's writer with a core free beside the compute, as ddp x1's .pt writer;
    # fsdp x2 computes on both cores of a 2-core machine, so there its writers take their CPU from training.
    for strategy, nproc in ((name, int(ranks)) for name, ranks in (setup.split("x") for setup in setups)):
        rounds: dict[str, list[dict]] = {"none": [], "sync": [], "async": []}
        for _ in range(repeats):
            for variant, extra in (
                ("none", ()),
                ("sync", (f"checkpoint.every_steps={every}",)),
                ("async", (f"checkpoint.every_steps={every}", "checkpoint.async_save=true")),
            ):
                ranks = run(strategy, nproc, steps, config, *extra)
                rounds[variant].append(
                    {
                        key: max(r[key] for r in ranks)
                        for key in ("loop_seconds", "fit_seconds", "save_call_seconds", "wait_seconds", "drain_seconds")
                    }
                )

        def med(variant: str, key: str, rounds: dict = rounds) -> float:
            return statistics.median(r[key] for r in rounds[variant])

        loop = {v: med(v, "loop_seconds") for v in rounds}
        fit = {v: med(v, "fit_seconds") for v in rounds}
        lost_sync, lost_bg = (loop["sync"] - loop["none"]) / saves, (loop["async"] - loop["none"]) / saves
        fit_ratio = (fit["async"] - fit["none"]) / (fit["sync"] - fit["none"])
        in_save, waited = med("async", "save_call_seconds") / saves, med("async", "wait_seconds") / saves
        print(
            f"{f'{strategy} x{nproc}':>14} {loop['none']:>9.1f} {loop['sync']:>6.1f} {loop['async']:>6.1f} "
            f"{lost_sync:>14.2f} {lost_bg:>12.2f} {lost_bg / lost_sync:>6.2f} "
            f"{in_save:>12.2f} {in_save - waited:>7.2f} {waited:>5.2f} {med('async', 'drain_seconds'):>9.2f} "
            f"{fit_ratio:>10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,3", help="numbers of ranks for the memory table, e.g. 2,3")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per memory run")
    parser.add_argument("--stall-steps", type=int, default=16)
    parser.add_argument("--stall-every", type=int, default=5, help="steps between saves")
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
    if args.mmap_threshold:
        EXTRA_ENV["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    if args.skip != "memory":
        memory([int(n) for n in args.ranks.split(",")], args.steps, args.config)
    if args.skip != "stall":
        stall(args.stall_steps, args.stall_every, args.stall_repeats, args.config, args.stall_setups.split(","))


if __name__ == "__main__":
    main()
