"""Shared fixtures: a clean environment and process-group state per test, free ports, CLI runners."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(PYTHON).with_name("torchrun"))

# Launcher variables that must not leak from the machine (or a SLURM job running the suite) into tests.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "TORCHELASTIC_RUN_ID")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under `pytest -n 2 --dist loadgroup` (tests/run.sh), the tests of a module that share one of its
    module-scoped fixtures (a training run several tests read) run on one worker, so the fixture runs once."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue  # grouped explicitly (the SLURM clusters)
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures and any(defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.hookimpl(trylast=True)  # after pytest-xdist has (or has not) put the groups into the test ids
def pytest_collection_finish(session):
    grouped = [item for item in session.items if item.get_closest_marker("xdist_group")]
    if getattr(session.config.option, "loadgroup", False) and grouped and "@" not in grouped[0].nodeid:
        raise pytest.UsageError("pytest-xdist's --dist loadgroup does not group tests with this pytest "
                                f"({pytest.__version__}; pytest-xdist issue 1386): two workers would start two "
                                "SLURM clusters on the same ports. Install pytest<9.2 (pip install -e '.[test]')")


@pytest.fixture(autouse=True)
def _isolate():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(*, wandb: bool = False, **extra: str) -> dict[str, str]:
    """The machine's environment without launcher, SLURM and W&B variables. W&B is off (WANDB_MODE=disabled:
    an offline run's start and finish cost a process about 4.5 s here) unless `wandb`: only the tests that
    read W&B files back turn it on."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("SLURM_", "WANDB_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not wandb:
        env["WANDB_MODE"] = "disabled"
    env.update(extra)
    return env


def run_group(cmd: list[str], *, env: dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """subprocess.run, but in a session of its own that is killed whole on timeout: a launcher's workers
    must not outlive a test that timed out (subprocess.run would kill only torchrun and orphan them)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-2000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path = REPO,
            fresh: bool = False) -> subprocess.CompletedProcess:
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
    return [TORCHRUN, "--nnodes=1", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{free_port()}", *extra, *target, *args]


def run_torchrun(nproc: int, *args: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 timeout: float = 300, script: str | None = None) -> subprocess.CompletedProcess:
    return run_group(torchrun_cmd(nproc, *args, extra=extra, script=script), env=env or clean_env(),
                     timeout=timeout)


def spawn(fn, world_size: int, *args) -> None:
    """Run fn(rank, world_size, port, *args) in `world_size` processes (a real gloo group can be formed
    from MASTER_ADDR/MASTER_PORT); raises if any process fails."""
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(world_size, free_port(), *args), nprocs=world_size, join=True)


@pytest.fixture(scope="session")
def xor30_torchrun(tmp_path_factory) -> Path:
    """The run directory of `torchrun --nproc_per_node=2 -m distrain train configs/xor.yaml trainer.epochs=30`:
    the uninterrupted run that the SLURM jobs, on one node (test_slurm) and on two (test_two_nodes), end
    bitwise equal to. Both modules are one xdist group ("slurm"), so it runs once."""
    run = tmp_path_factory.mktemp("xor30_torchrun")
    result = run_torchrun(2, "train", "configs/xor.yaml", f"run.dir={run}", "trainer.epochs=30")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def xor10_torchrun(tmp_path_factory) -> Path:
    """The run directory of `torchrun --nproc_per_node=2 -m distrain train configs/xor.yaml trainer.epochs=10`,
    the reference of the tests marked xdist_group("xor10") (one worker, so it runs once)."""
    run = tmp_path_factory.mktemp("xor10_torchrun")
    result = run_torchrun(2, "train", "configs/xor.yaml", f"run.dir={run}", "trainer.epochs=10", "log.plots=false")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return run
