"""Hangs, stragglers and orphans found and named (distrain/launch/watchdog.py): faults injected into one rank
of a torchrun x2 job by tests/helpers/hang_faults.py, each ending within trainer.hang_timeout + 15 s with one
message that names the rank and where it is, exit status 5, and a checkpoint that a rerun resumes bitwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.runs import REPO, assert_bitwise, clean_env, newest_weights, run_torchrun

SCRIPT = "tests/helpers/hang_faults.py"
CONFIG = str(REPO / "tests" / "configs" / "hangs.yaml")
HANG_TIMEOUT = 5.0  # tests/configs/hangs.yaml


def train(run_dir: Path, *overrides: str, fault: str = "", nproc: int = 2, **env: str):
    """The fault script under torchrun; returns (result, seconds from the fault's strike to the end)."""
    mark = run_dir.parent / f"{run_dir.name}.mark"
    mark.unlink(missing_ok=True)
    extra = dict(FAULT=fault, FAULT_MARK=str(mark), **env) if fault else {}
    result = run_torchrun(nproc, CONFIG, f"run.dir={run_dir}", *overrides, script=SCRIPT, env=clean_env(**extra))
    ended = time.time()
    return result, (ended - float(mark.read_text())) if mark.exists() else None


def alive(pid: int) -> bool:
    """The process runs (a zombie, exited but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run without a fault: what every resumed run must end bitwise equal to."""
    run_dir = tmp_path_factory.mktemp("hangs") / "reference"
    result, _ = train(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def one_message(result: subprocess.CompletedProcess) -> str:
    """The job's one hang message (torchrun's summary repeats it under `traceback :`; that copy not counted)."""
    found = [i for i, line in enumerate(result.stderr.splitlines()) if line.startswith("distrain: error: ")]
    assert len(found) == 1, result.stderr[-4000:]
    lines = result.stderr.splitlines()[found[0] :]
    end = next(i for i, line in enumerate(lines) if line.startswith("HINT: "))
    return "\n".join(lines[: end + 1])


FAULTS = {
    # fault: (overrides, words the message must hold)
    "getitem": ((), ["rank 1 is behind: in your data set's `__getitem__` at", "hang_faults.py", "rank 0 waits in"]),
    "step": ((), ["rank 1 is behind: in your code, `user_step` at", "hang_faults.py", "rank 0 waits in the gradient"]),
    "worker": (("data.num_workers=1",), ["rank 1 is behind: waiting for its DataLoader worker", "in `__getitem__` at"]),
    "skip_exchange": ((), ["the ranks called different collectives: rank 1 aborted", "rank 0 was in the gradient"]),
    "extra_eval": ((), ["the ranks called different collectives", "rank 1 in all_reduce #", "the evaluation totals"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_on_one_rank_is_named_in_one_message_and_resumes_bitwise(fault, reference, tmp_path):
    overrides, words = FAULTS[fault]
    run_dir = tmp_path / fault
    result, since = train(run_dir, *overrides, fault=fault)
    assert result.returncode != 0
    message = one_message(result)
    for word in words:
        assert word in message, message
    assert "resumes from the newest complete checkpoint" in message
    # Exit status 5 on every rank (torchrun's summary), gloo's abort aside: that rank ends by SIGABRT.
    statuses = [line.split(":")[1].split()[0] for line in result.stderr.splitlines() if "exitcode  :" in line]
    assert "5" in statuses and set(statuses) <= {"5", "-6"}, statuses
    assert since is not None and since < HANG_TIMEOUT + 15, since
    again, _ = train(run_dir, *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
    assert_bitwise(newest_weights(run_dir), newest_weights(reference))


@pytest.mark.slow
def test_three_ranks_the_one_behind_named_and_the_two_waiting(tmp_path):
    result, since = train(tmp_path / "three", "data.global_batch_size=96", fault="getitem", nproc=3, FAULT_RANK="2")
    message = one_message(result)
    assert "rank 2 is behind: in your data set's `__getitem__` at" in message, message
    assert "ranks 0 and 1 wait in the gradient all-reduce" in message, message
    assert since is not None and since < HANG_TIMEOUT + 15, since


@pytest.mark.slow
def test_orphans_of_a_killed_torchrun_agent_save_stop_and_the_rerun_resumes_bitwise(reference, tmp_path):
    run_dir = tmp_path / "orphans"
    # The last rank SIGKILLs torchrun's agent mid-run: the workers (each in a session of its own) live on.
    # run_torchrun returns when every process holding its output has exited: the orphans too.
    result, since = train(run_dir, fault="kill_agent")
    assert since is not None and since < 10, since
    assert "is gone: this worker saves a checkpoint and stops" in result.stderr, result.stderr[-3000:]
    assert "stopped on SIGTERM after saving a checkpoint" in result.stderr
    holder = json.loads((run_dir / ".lock").read_text())
    # Its pipes close before the kernel marks it exited: give the exit a moment to finish.
    deadline = time.monotonic() + 10
    while alive(holder["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder["stopping"] is True and not alive(holder["pid"])
    again, _ = train(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
    assert_bitwise(newest_weights(run_dir), newest_weights(reference))


def test_a_new_run_waits_for_a_holder_that_is_stopping(tmp_path, caplog):
    from distrain.checkpoint import ownership

    held = tmp_path / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from distrain.checkpoint.ownership import Owner, _take; "
            f"handle, _ = _take(Path({str(tmp_path)!r})); Owner(handle).stopping(); Path({str(held)!r}).touch(); "
            "time.sleep(2)",
        ],
        cwd=REPO,
        env=clean_env(),
    )
    try:
        while not held.exists():
            assert holder.poll() is None
            time.sleep(0.05)
        started = time.monotonic()
        handle, verdict = ownership._take(tmp_path)
        assert verdict is None and time.monotonic() - started > 0.5
        assert "is held by a run that is stopping" in caplog.text
        handle.close()
    finally:
        holder.wait(timeout=30)


def test_a_live_holder_that_is_not_stopping_is_refused_at_once(tmp_path):
    from distrain.checkpoint import ownership

    handle, verdict = ownership._take(tmp_path)
    try:
        started = time.monotonic()
        other, refused = ownership._take(tmp_path)  # the same process: a second open file, refused
        assert other is None and refused[0] == "in use" and time.monotonic() - started < 0.5
    finally:
        handle.close()


def test_hang_timeout_must_be_shorter_than_the_process_group_timeout():
    from distrain.config.parse import load_config
    from distrain.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, ["trainer.hang_timeout=900", "dist.timeout_s=600"])
    assert info.value.key == "trainer.hang_timeout" and "dist.timeout_s" in str(info.value)
    assert load_config(CONFIG, ["trainer.hang_timeout=0"]).trainer.hang_timeout == 0
    from distrain.launch.watchdog import resolve_hang_timeout

    # Unset: 300 s, or half of the process group's timeout when that is shorter (never refused); 0: off.
    assert load_config(CONFIG, ["trainer.hang_timeout=null", "dist.timeout_s=120"]).trainer.hang_timeout is None
    assert resolve_hang_timeout(None, 900) == 300 and resolve_hang_timeout(None, 120) == 60
    assert resolve_hang_timeout(0, 900) is None and resolve_hang_timeout(5, 900) == 5


def test_the_message_names_the_rank_behind_and_those_waiting():
    from distrain.launch.watchdog import describe

    def report(rank, frames, collective=None, seq=3):
        return {"rank": rank, "pid": 1, "host": "h", "step": 11, "collective": collective, "seq": seq, "frames": frames}

    user = os.path.join(str(REPO), "mydata.py")
    reports = [
        report(0, [["/x/torch/autograd/graph.py", 1, "_engine_run_backward", ""]]),
        report(1, [[user, 42, "__getitem__", "time.sleep(9)"]]),
        report(2, [["/x/torch/autograd/graph.py", 1, "_engine_run_backward", ""]]),
    ]
    text = describe(reports, 3, 5)
    assert "rank 1 is behind: in your data set's `__getitem__` at mydata.py:42" in text
    assert "ranks 0 and 2 wait in the gradient all-reduce of step 12 (DDP, inside backward)" in text
    assert "mydata.py:42 in __getitem__: time.sleep(9)" in text


@pytest.mark.slow
def test_a_straggler_is_named_within_two_logging_windows(tmp_path):
    result, _ = train(tmp_path / "slow", "trainer.max_steps=8", "trainer.epochs=1", fault="slow")
    assert result.returncode == 0, result.stderr[-3000:]
    named = [line for line in (result.stdout + result.stderr).splitlines() if "straggler: rank" in line]
    assert named and all("straggler: rank 1 took" in line for line in named), named
    assert "steps 1-4" in named[0] or "steps 5-8" in named[0]
    assert "stragglers over the run: rank 1 in" in result.stdout + result.stderr
