"""What the test modules share: the repository's paths, running distrain (in this process, in a new one,
under the real torchrun, in spawned gloo groups), and reading back what a run left (its newest
checkpoint's weights, its metrics.jsonl records, its checkpoints' manifests).

    from helpers.runs import XOR, clean_env, run_cli, run_torchrun, newest_weights, records, last_record

A plain module (tests/ is on sys.path under pytest): conftest.py keeps only fixtures and hooks, and imports
from here what its fixtures need.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TORCHRUN = str(Path(PYTHON).with_name("torchrun"))
XOR = str(REPO / "configs" / "xor.yaml")
"""The shipped XOR config (configs/xor.yaml), by its absolute path: found from any working directory."""

# Launcher variables that must not leak from the machine (or a SLURM job running the suite) into tests.
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
)


# ------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(*, wandb: bool = False, **extra: str) -> dict[str, str]:
    """The machine's environment without launcher, SLURM and W&B variables. W&B is off (WANDB_MODE=disabled:
    an offline run's start and finish cost a process about 4.5 s here, and a machine with `wandb login`
    would turn it on) unless `wandb`: W&B's default then applies (off without an account), and the tests
    that read W&B files back ask for wandb.mode=offline."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith(("SLURM_", "WANDB_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not wandb:
        env["WANDB_MODE"] = "disabled"
    env.update(extra)
    return env


def run_group(cmd: list[str], *, env: dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """subprocess.run, but in a session of its own that is killed whole on timeout: a launcher's workers
    must not outlive a test that timed out (subprocess.run would kill only torchrun and orphan them)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-2000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path = REPO, fresh: bool = False
) -> subprocess.CompletedProcess:
    """`distrain ARGS` in one process: by `distrain.cli.main` in this one (run_cli_here), or with `fresh`
    as `python -m distrain ARGS` in a new interpreter (for tests of the process itself: signals, kills,
    W&B's service, DataLoader workers, user modules imported from `cwd`, compiled models)."""
    if not fresh:
        return run_cli_here(*args, env=env, cwd=cwd)
    return run_group([PYTHON, "-m", "distrain", *args], env=env or clean_env(), timeout=timeout, cwd=cwd)


def run_cli_here(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`distrain ARGS` run by `distrain.cli.main` in this process, as a new one would run it (the same
    environment, working directory and one intra-op thread; exit status, stdout and stderr returned
    alike), without a new process's start: `import torch` and the `torch._dynamo` import that creating
    an optimizer triggers cost 6-7 s of CPU per process here, most of the suite's CPU when every
    one-process run paid it. An unexpected exception propagates (a new process would exit 1 with its
    traceback): the test fails."""
    import contextlib
    import io
    import logging

    import torch

    from distrain.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    logger = logging.getLogger("distrain")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    os.environ.clear()
    os.environ.update(env or clean_env())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", threads)))
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors and --help, as the interpreter reads them
                code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
                if isinstance(exc.code, str):
                    print(exc.code, file=err)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        logger.handlers[:], logger.propagate = handlers, propagate
        logger.setLevel(level)
    return subprocess.CompletedProcess(["distrain", *args], code or 0, out.getvalue(), err.getvalue())


def torchrun_cmd(nproc: int, *args: str, extra: tuple[str, ...] = (), script: str | None = None) -> list[str]:
    """The real torchrun, one node, `nproc` gloo processes, on a free port; `-m distrain` or a script."""
    target = [str(REPO / script)] if script else ["-m", "distrain"]
    return [
        TORCHRUN,
        "--nnodes=1",
        f"--nproc_per_node={nproc}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{free_port()}",
        *extra,
        *target,
        *args,
    ]


def run_torchrun(
    nproc: int,
    *args: str,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 300,
    script: str | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(nproc, *args, extra=extra, script=script)
    return run_group(cmd, env=env or clean_env(), timeout=timeout, cwd=cwd)


def spawn(fn, world_size: int, *args) -> None:
    """Run fn(rank, world_size, port, *args) in `world_size` processes (a real gloo group can be formed
    from MASTER_ADDR/MASTER_PORT); raises if any process fails."""
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(world_size, free_port(), *args), nprocs=world_size, join=True)


def printed_json(result: subprocess.CompletedProcess) -> dict[str, Any]:
    """The JSON object a command prints as its last line (`distrain eval`'s figures)."""
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ what a run left


def newest_payload(run_dir: str | Path) -> dict[str, Any]:
    """The contents of the run's newest complete checkpoint (the one a resume would pick: a .pt, or a
    sharded one with the whole model gathered), on the CPU."""
    from distrain.checkpoint.store import find_resumable, load_payload

    path = find_resumable(run_dir)
    assert path is not None, f"{run_dir} holds no complete checkpoint"
    return load_payload(path, map_location="cpu")


def newest_weights(run_dir: str | Path) -> dict[str, Any]:
    """The model weights of the run's newest complete checkpoint."""
    return newest_payload(run_dir)["model"]


def weights_at(path: str | Path) -> dict[str, Any]:
    """The model weights of one checkpoint (a .pt file or a sharded checkpoint's folder), on the CPU."""
    from distrain.checkpoint.store import load_payload

    return load_payload(path, map_location="cpu")["model"]


def assert_bitwise(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two state dicts with the same keys, in the same order, and bitwise equal tensors."""
    import torch

    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: max diff {(a[key] - b[key]).abs().max().item()}"


def records(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records, in order; with `split`, only that split's (train, val, test)."""
    from distrain.reporting.history import read_metrics

    found = read_metrics(run_dir)
    return found if split is None else [r for r in found if r["split"] == split]


def last_record(run_dir: str | Path, split: str) -> dict[str, Any]:
    """The split's last record: its figures after the last epoch."""
    found = records(run_dir, split)
    assert found, f"{run_dir}/metrics.jsonl has no {split} record"
    return found[-1]


def assert_checkpoints_verify(
    run_dir: str | Path, *, at_least: int = 1, newest_may_be_unfinished: bool = False
) -> list[Path]:
    """Every periodic checkpoint of the run (at least `at_least` of them) has its manifest and matches it
    (checksums, sizes, every shard), and a resume picks the newest. `newest_may_be_unfinished`: after a
    kill, the newest alone may lack its manifest (killed between its rename and its manifest: a state a
    resume skips by design), and the resume's choice is then the one before it. Returns the checkpoints,
    newest first."""
    from distrain.checkpoint.files import Manifest
    from distrain.checkpoint.store import checkpoint_dir, find_resumable, list_checkpoints

    kept = list_checkpoints(checkpoint_dir(run_dir))
    assert len(kept) >= at_least, f"{len(kept)} checkpoint(s) in {run_dir}, expected at least {at_least}"
    verified = []
    for index, path in enumerate(kept):
        manifest = Manifest.read(path)
        if manifest is None and index == 0 and newest_may_be_unfinished:
            continue
        assert manifest is not None, f"{path} has no manifest"
        assert manifest.problem() is None, f"{path}: {manifest.problem()}"
        assert f"step-{manifest.global_step:08d}" == path.name.removesuffix(".pt"), path
        verified.append(path)
    assert verified and find_resumable(run_dir) == verified[0]
    return kept


def write_fashion_mnist(root: str | Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """A small FashionMNIST in its real idx files under `root`/FashionMNIST/raw (random uint8 images and
    labels 0..9), as torchvision reads them; returns `root`."""
    import struct

    import numpy as np

    rng = np.random.default_rng(seed)
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return Path(root)
