"""Fixtures and hooks only: a clean environment and process-group state per test, the shared reference
runs, and the xdist grouping. What the test modules import (paths, runners, readers) is in helpers/runs.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.runs import run_torchrun


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
        raise pytest.UsageError(
            "pytest-xdist's --dist loadgroup does not group tests with this pytest "
            f"({pytest.__version__}; pytest-xdist issue 1386): two workers would start two "
            "SLURM clusters on the same ports. Install pytest<9.2 (pip install -e '.[test]')"
        )


@pytest.fixture(autouse=True)
def _isolate():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


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
