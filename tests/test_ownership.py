"""One run per run directory: a second run into a directory in use stops at once naming the holder, the
first finishes with a clean record; a killed holder's directory is taken over and resumed."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.runs import PYTHON, REPO, XOR, assert_checkpoints_verify, clean_env, records, run_cli, torchrun_cmd

from distrain.checkpoint.store import find_resumable

ARGS = ["checkpoint.every_epochs=10", "checkpoint.keep_last=0", "wandb.mode=disabled", "log.plots=false"]


def start(cmd, **env):
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=clean_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_a_second_run_into_a_directory_in_use_is_refused_and_the_first_is_clean(tmp_path):
    # The first run's ranks wait after step 30 (mid epoch 2) until the second run has been refused.
    release = tmp_path.parent / f"{tmp_path.name}-release"
    args = ("train", XOR, f"run.dir={tmp_path}", "trainer.epochs=3", *ARGS)
    first = start(
        torchrun_cmd(2, *args, script="tests/helpers/kill_at_step.py"), HOLD_STEP="30", HOLD_FILE=str(release)
    )
    try:
        wait_for(lambda: Path(f"{release}.held").exists() or first.poll() is not None)
        assert first.poll() is None, first.communicate()[1][-3000:]
        started = time.time()
        second = run_cli(*args)
        assert second.returncode == 2 and "is in use by a live run (PID" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and time.time() - started < 30
        release.touch()
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err[-2000:]
    pairs = [(r["epoch"], r["split"]) for r in records(tmp_path)]
    assert pairs == [(e, s) for e in range(3) for s in ("train", "test")]  # each exactly once
    assert_checkpoints_verify(tmp_path)
    again = run_cli(*args)
    assert again.returncode == 0 and "this run already finished (epoch 3 of 3)" in again.stdout


@pytest.mark.slow
def test_the_directory_of_a_killed_run_is_taken_over_and_resumed(tmp_path):
    holder = start([PYTHON, "-m", "distrain", "train", XOR, f"run.dir={tmp_path}", "trainer.epochs=150", *ARGS])
    wait_for(lambda: find_resumable(tmp_path) is not None)
    os.killpg(holder.pid, signal.SIGKILL)  # no chance to clean up: the kernel drops the lock
    holder.communicate()
    taken = run_cli("train", XOR, f"run.dir={tmp_path}", "trainer.epochs=150", *ARGS)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert "resumed from" in taken.stdout
    assert sorted({r["epoch"] for r in records(tmp_path)}) == list(range(150))


def test_a_run_dir_that_is_a_file_is_a_config_error(tmp_path):
    path = tmp_path / "not_a_dir"
    path.write_text("")
    result = run_cli("train", XOR, f"run.dir={path}", *ARGS)
    assert result.returncode == 2 and "'run.dir'" in result.stderr and "Traceback" not in result.stderr
