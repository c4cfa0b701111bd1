"""Soak: does a long run stay flat? XOR trained for --steps optimizer steps under torchrun (2 gloo ranks),
a checkpoint every --save-every steps (keep_last 3), an evaluation and metrics.jsonl record every epoch
(20 steps), W&B offline, once with synchronous saves and once with background saves (checkpoint.async_save).

    .venv/bin/python bench/soak.py                          # 20,000 steps, saves every 10, both variants
    .venv/bin/python bench/soak.py --steps 4000 --sample-every 500 --variants async

Each rank samples itself every --sample-every steps (bench/soak.py --worker, a hook after each step's
save): resident memory (VmRSS), open file descriptors (not counting a write's temporary file), OS
threads, and child processes (W&B's service is rank 0's). The table shows both ranks' figures per sample;
"growth" compares the lowest of the last 3 samples with the lowest of the first 3 from step
--settle-steps on (the first steps fill caches and start W&B's service: not a leak; a leak raises the
floor, a passing allocation does not).
After each run: temporary files or folders left anywhere in run.dir (atomic writes' `.NAME.tmp-PID`,
sharded saves' `.step-N.tmp-...`), and whether keep_last held. Exit status 1 when a growth exceeds
--max-growth or a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 20  # configs/xor.yaml: 2500 samples, global batch 128
KEEP_LAST = 3
FIELDS = ("rss_mb", "fds", "threads", "children")
WINDOW = 3  # samples per floor (see report)


def _open_fds() -> int:
    """Open file descriptors, without a write in progress: an atomic write's temporary file (a background
    writer has one open most of the time, saves every 10 steps) is the save's, not a leak."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += ".tmp-" not in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, or the writer's file)
    return count


def _sample() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    value = {line.split(":")[0]: line.split(":")[1].split() for line in status.splitlines()}
    me = str(os.getpid())
    children = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rpartition(")")[2].split()[1] == me:
                children += 1
        except OSError:
            continue  # exited meanwhile
    return {
        "rss_mb": int(value["VmRSS"][0]) / 1024,
        "fds": _open_fds(),
        "threads": int(value["Threads"][0]),
        "children": children,
    }


def worker(samples: Path, every: int, argv: list[str]) -> int:
    """One rank: train with distrain's CLI, sampling itself after every `every`-th step."""
    import distrain.loop.trainer
    from distrain.cli import main

    original = distrain.loop.trainer.Trainer.maybe_save_step
    out = samples.with_name(f"{samples.name}.rank{os.environ.get('RANK', '0')}")

    def sampled(self):
        saved = original(self)
        step = self.state.progress.global_step
        if step % every == 0:
            with open(out, "a") as f:
                f.write(json.dumps({"step": step, **_sample()}) + "\n")
        return saved

    distrain.loop.trainer.Trainer.maybe_save_step = sampled
    return main(argv)


def soak(args: argparse.Namespace, background: bool, root: Path) -> tuple[list[dict], list[str]]:
    run = root / ("async" if background else "sync")
    samples = root / f"samples-{run.name}"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [
        torchrun,
        "--nnodes=1",
        f"--nproc_per_node={args.nproc}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{args.port}",
        str(Path(__file__).resolve()),
        "--worker",
        str(samples),
        str(args.sample_every),
        "train",
        str(REPO / "configs" / "xor.yaml"),
        f"run.dir={run}",
        f"trainer.epochs={args.steps // STEPS_PER_EPOCH}",
        "checkpoint.every_epochs=0",
        f"checkpoint.every_steps={args.save_every}",
        f"checkpoint.keep_last={KEEP_LAST}",
        f"checkpoint.async_save={str(background).lower()}",
        "wandb.mode=offline",
        "log.progress_bar=never",
    ]
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(root), OMP_NUM_THREADS="1", WANDB_SILENT="true")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    problems = [] if done.returncode == 0 else [f"exit status {done.returncode}: {done.stderr[-2000:]}"]
    per_rank = [
        [json.loads(line) for line in samples.with_name(f"{samples.name}.rank{r}").read_text().splitlines()]
        for r in range(args.nproc)
    ]
    leftovers = [str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name]
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    if len(kept) != KEEP_LAST:
        problems.append(f"keep_last={KEEP_LAST}, but {len(kept)} checkpoints are kept: {kept}")
    return per_rank, problems


def report(name: str, per_rank: list[list[dict]], args: argparse.Namespace) -> list[str]:
    ranks = range(len(per_rank))
    head = " | ".join(f"{field} r{r}" for field in FIELDS for r in ranks)
    print(f"\n{name}\n| step | {head} |\n|---|{'---|' * len(FIELDS) * len(per_rank)}")
    for row in zip(*per_rank):
        cells = " | ".join(
            f"{row[r][field]:.1f}" if field == "rss_mb" else str(row[r][field]) for field in FIELDS for r in ranks
        )
        print(f"| {row[0]['step']:,} | {cells} |")
    problems, growths = [], []
    for r in ranks:
        settled = [s for s in per_rank[r] if s["step"] >= args.settle_steps]
        for field in FIELDS:
            # Floors over 3 samples: a leak raises the floor, one sample's passing allocation does not.
            start = min(s[field] for s in settled[:WINDOW])
            end = min(s[field] for s in settled[-WINDOW:])
            growth = (end - start) / start if start else float(end > start)
            growths.append(f"{field} r{r} {growth:+.1%}")
            if growth > args.max_growth:
                problems.append(f"{field} of rank {r} grew {growth:.1%} after step {args.settle_steps}")
    print(f"growth after step {args.settle_steps:,}: " + ", ".join(growths))
    return problems


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--settle-steps", type=int, default=2000)
    parser.add_argument("--max-growth", type=float, default=0.05)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--variants", default="sync,async", help="sync, async or both (comma-separated)")
    parser.add_argument("--port", type=int, default=29581)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="distrain-soak-"))
    problems = []
    try:
        for variant in args.variants.split(","):
            per_rank, found = soak(args, variant == "async", root)
            title = f"{args.steps:,} steps, a save every {args.save_every}, {variant} saves"
            problems += [f"{variant}: {p}" for p in found + report(title, per_rank, args)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n" + ("\n".join(problems) if problems else "flat: no growth over the limit, nothing left behind"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
