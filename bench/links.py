"""Training over slow links, measured: two "nodes" (network namespaces, one process each under
`torchrun --nnodes=2`) joined by a veth link shaped with tc to each rate, training the links workload
(bench/configs/links.yaml: the FashionMNIST MLP 784-2048-2048-10, 5.8M parameters, global batch 256).

    .venv/bin/python bench/links.py                            # every link and variant (about 15 minutes)
    .venv/bin/python bench/links.py --links 100mbit --variants bare,ddp --repeats 3

For each link and variant (median of --repeats runs, the variants taking turns): samples/s over a steady
window of steps (after warm-up; a whole number of
syncs for the replicas' strategies), scaling efficiency (two nodes' samples/s over twice one process's,
the one process training at batch 128 alone), bytes on the wire per sample (both ends' interface
counters over the same window: not estimated), and, once per variant on the unshaped link (the algorithm
decides it, not the link), the test accuracy after one epoch (60,000 samples). Needs root, `ip netns`
and `tc` (bench/shaped.py); the real FashionMNIST (tests/fetch_data.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.shaped import ADDRESSES, ShapedLink  # noqa: E402

CONFIG = str(HERE / "configs" / "links.yaml")
# name -> (overrides, H: steps between syncs, or 0 for a strategy that syncs every step). PowerSGD starts
# compressing after ddp.powersgd_start_step (10) steps of plain all-reduce: its window starts after them.
VARIANTS = {
    "bare": (None, 0),  # bench/links_bare.py: torch's DDP by hand
    "ddp": ([], 0),
    "fp16": (["ddp.comm_hook=fp16"], 0),
    "bf16": (["ddp.comm_hook=bf16"], 0),
    "powersgd": (["ddp.comm_hook=powersgd", "ddp.powersgd_rank=4"], 0),
    "local_sgd10": (["strategy=diloco", "diloco.sync_every=10", "diloco.outer_lr=1.0", "diloco.outer_momentum=0"], 10),
    "local_sgd50": (["strategy=diloco", "diloco.sync_every=50", "diloco.outer_lr=1.0", "diloco.outer_momentum=0"], 50),
    # DiLoCo as OpenDiLoCo runs it: the pseudo-gradient in low precision on the wire (here bfloat16).
    "diloco10": (["strategy=diloco", "diloco.sync_every=10", "diloco.wire_dtype=bfloat16"], 10),
    "diloco50": (["strategy=diloco", "diloco.sync_every=50", "diloco.wire_dtype=bfloat16"], 50),
    # ... and its sync's all-reduce hidden behind the next 10 inner steps.
    "diloco50o": (
        ["strategy=diloco", "diloco.sync_every=50", "diloco.wire_dtype=bfloat16", "diloco.overlap_steps=10"],
        50,
    ),
}
LINKS = {"unshaped": None, "1gbit": "1gbit", "100mbit": "100mbit"}


def window(variant: str) -> tuple[int, int]:
    """Steps (first, last] timed: after warm-up (PowerSGD: after its plain steps), whole rounds of H steps
    for the replicas' strategies."""
    h = VARIANTS[variant][1]
    if h:
        return 2 * h, 2 * h + max(2 * h, 20)
    return (12, 32) if variant == "powersgd" else (6, 26)


def environment(data: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO), DISTRAIN_DATA=data)
    return env


def command(variant: str, nodes: int, node: int, data: str, overrides: list[str], port: int) -> list[str]:
    torchrun = [str(Path(sys.executable).with_name("torchrun")), f"--nnodes={nodes}", f"--node_rank={node}"]
    torchrun += ["--nproc_per_node=1", f"--master_addr={ADDRESSES[0] if nodes > 1 else '127.0.0.1'}"]
    torchrun += [f"--master_port={port}"]
    if variant == "bare":
        return [*torchrun, "-m", "bench.links_bare", data]
    return [*torchrun, "-m", "bench.links_worker", CONFIG, f"data.args.root={data}", *overrides]


def run_pair(link: ShapedLink, variant: str, data: str, out: Path, *, accuracy: bool, port: int) -> dict:
    overrides, _ = VARIANTS[variant]
    first, last = window(variant)
    results = []
    procs = []
    for node in (0, 1):
        env = environment(data)
        env.update(LINKS_OUT=str(out / f"{variant}-{node}.json"), LINKS_FIRST=str(first), LINKS_LAST=str(last))
        extra = [f"run.dir={out / variant}", "data.args.num_test=10000"]
        if not accuracy:  # a throughput run stops after its window
            extra += [f"trainer.max_steps={last}", "data.args.num_test=1000"]
        cmd = command(variant, 2, node, data, (overrides or []) + extra, port)
        procs.append(link.start(node, cmd, env, log=out / f"{variant}-{node}.log"))
    codes = [p.wait(timeout=1800) for p in procs]
    if any(codes):
        raise SystemExit(f"{variant}: exit {codes}; see {out}/{variant}-0.log")
    for node in (0, 1):
        results.append(json.loads((out / f"{variant}-{node}.json").read_text()))
    seconds = max(r["seconds"] for r in results)
    steps = results[0]["steps"]
    return {
        "samples_per_s": steps * 256 / seconds,
        "bytes_per_sample": sum(r["tx_bytes"] for r in results) / (steps * 256),
        "test_accuracy": results[0].get("test_accuracy"),
    }


def one_process(data: str, out: Path, repeats: int = 3) -> float:
    """samples/s of one process alone at batch 128 (the scaling baseline) over the ddp window: the median
    of `repeats` runs (a lone run's figure moves with the machine's phases)."""
    return statistics.median(_one_process(data, out) for _ in range(repeats))


def _one_process(data: str, out: Path) -> float:
    first, last = window("ddp")
    env = environment(data)
    env.update(LINKS_OUT=str(out / "one.json"), LINKS_FIRST=str(first), LINKS_LAST=str(last))
    overrides = ["data.global_batch_size=128", f"trainer.max_steps={last}", "data.args.num_test=1000"]
    cmd = command("ddp", 1, 0, data, [*overrides, f"run.dir={out / 'one'}"], 29581)
    with open(out / "one.log", "w") as log:
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    r = json.loads((out / "one.json").read_text())
    return r["steps"] * 128 / r["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", default=",".join(LINKS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant on each link (median)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the one-epoch accuracy runs")
    parser.add_argument("--data", default=os.environ.get("DISTRAIN_DATA", str(Path.home() / ".cache/distrain/data")))
    args = parser.parse_args()
    reason = ShapedLink.unavailable()
    if reason:
        raise SystemExit(f"bench/links.py {reason}")
    variants = args.variants.split(",")
    out = Path(tempfile.mkdtemp(prefix="links-"))
    print(f"logs in {out}; torch {__import__('torch').__version__}; {os.cpu_count()} cores", flush=True)
    alone = one_process(args.data, out)
    print(f"one process, batch 128: {alone:,.0f} samples/s", flush=True)
    table: dict[str, dict[str, dict]] = {}
    port = 29600
    for link_name in args.links.split(","):
        runs: dict[str, list[dict]] = {}
        with ShapedLink(LINKS[link_name]) as link:
            for _ in range(args.repeats):  # the variants take turns: a slow phase hits them alike
                for variant in variants:
                    port += 1
                    started = time.time()
                    r = run_pair(link, variant, args.data, out, accuracy=False, port=port)
                    runs.setdefault(variant, []).append(r)
                    print(
                        f"{link_name:>9} {variant:<12} {r['samples_per_s']:8,.0f} samples/s  "
                        f"{r['bytes_per_sample'] / 1000:8.2f} KB/sample  ({time.time() - started:.0f} s)",
                        flush=True,
                    )
        for variant, rs in runs.items():
            r = {key: statistics.median(x[key] for x in rs) for key in ("samples_per_s", "bytes_per_sample")}
            r["efficiency"] = r["samples_per_s"] / (2 * alone)
            table.setdefault(link_name, {})[variant] = r
    accuracy = {}
    if not args.no_accuracy:
        with ShapedLink(None) as link:
            for variant in variants:
                if variant == "bare":
                    continue
                port += 1
                accuracy[variant] = run_pair(link, variant, args.data, out, accuracy=True, port=port)["test_accuracy"]
                print(f"accuracy after one epoch: {variant:<12} {accuracy[variant]:.4f}", flush=True)
    print_table(table, accuracy, alone)
    (out / "links.json").write_text(json.dumps({"alone": alone, "table": table, "accuracy": accuracy}, indent=1))


def print_table(table: dict, accuracy: dict, alone: float) -> None:
    print(f"\none process at batch 128: {alone:,.0f} samples/s")
    for link_name, rows in table.items():
        print(f"\n{link_name}:")
        print("| variant | samples/s | efficiency | KB/sample | x fewer bytes than ddp | x bare | accuracy |")
        ddp_bytes = rows.get("ddp", {}).get("bytes_per_sample")
        bare = rows.get("bare", {}).get("samples_per_s")
        for variant, r in rows.items():
            fewer = f"{ddp_bytes / r['bytes_per_sample']:.1f}" if ddp_bytes and r["bytes_per_sample"] else "-"
            vs_bare = f"{r['samples_per_s'] / bare:.2f}" if bare else "-"
            acc = f"{accuracy[variant]:.4f}" if variant in accuracy else "-"
            print(
                f"| {variant} | {r['samples_per_s']:,.0f} | {r['efficiency']:.2f} | "
                f"{r['bytes_per_sample'] / 1000:.2f} | {fewer} | {vs_bare} | {acc} |"
            )
    if accuracy:
        print(f"\nmedian accuracy {statistics.median(accuracy.values()):.4f}")


if __name__ == "__main__":
    main()
