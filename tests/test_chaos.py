"""Nothing lost under chaos: random SIGKILLs of single workers and of the whole job, at random moments,
under the real torchrun --max-restarts with background saves, end with exactly the model of an
uninterrupted run; and each survivor of a lost peer says so in one line.

The kills are planned from a seed (printed; CHAOS_SEED=N repeats a plan, e.g. a failed CI run's):
    CHAOS_SEED=7 .venv/bin/python -m pytest -q tests/test_chaos.py -n 0 -s
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
from helpers.runs import (
    XOR,
    assert_bitwise,
    assert_checkpoints_verify,
    clean_env,
    newest_weights,
    records,
    run_torchrun,
)

from distrain.checkpoint.store import find_resumable

pytestmark = pytest.mark.slow  # real launchers end to end (the fast subset skips them)

# 8 epochs of 20 steps (160), a background save every 7 steps and at each epoch end; momentum makes the
# optimizer state matter; keep_last=0 keeps every save, so each one can be verified afterwards.
ARGS = (
    "trainer.epochs=8",
    "checkpoint.every_steps=7",
    "checkpoint.every_epochs=1",
    "checkpoint.keep_last=0",
    "checkpoint.async_save=true",
    "optim.args.momentum=0.9",
    "log.plots=false",
)
WORKER = "tests/helpers/chaos_worker.py"
NUM_WORKER_KILLS = 5
MOST_STEPS = 20  # per attempt before its kill: 6 kills reach at most step 120 of 160, so every one fires


def chaos_plan(seed: int) -> list[dict[str, list]]:
    """The kills, as one CHAOS_PLAN (see chaos_worker.py) per torchrun command: 5 of a random worker and
    one of the whole job, in a random order, each after 1-20 steps of its attempt and 0-20 ms after that
    step. The job kill ends the first command; the second (the rerun) takes the kills after it."""
    rng = random.Random(seed)

    def kill(whom: str) -> list:
        return [whom, rng.randint(1, MOST_STEPS), round(rng.uniform(0.0, 0.02), 4)]

    kills = [kill(f"rank{rng.randrange(2)}") for _ in range(NUM_WORKER_KILLS)]
    job_at = rng.randrange(NUM_WORKER_KILLS + 1)
    kills.insert(job_at, kill("job"))
    first, rerun = kills[: job_at + 1], kills[job_at + 1 :]
    return [{str(i): k for i, k in enumerate(first)}, {str(i): k for i, k in enumerate(rerun)}]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    result = run_torchrun(2, "train", XOR, f"run.dir={run}", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_random_sigkills_of_workers_and_the_job_end_bitwise_equal(reference, tmp_path):
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
    plans = chaos_plan(seed)
    print(f"chaos seed {seed} (CHAOS_SEED={seed} repeats it): {plans}")
    said = f"seed {seed}, plan {plans}"
    stderr = []
    for number, plan in enumerate(plans):
        ends_in_job_kill = number == 0
        # As many restarts as planned worker kills, no more: any other death (a crash at exit, a hang's
        # timeout) would use one up and fail the command.
        restarts = len(plan) - 1 if ends_in_job_kill else len(plan)
        result = run_torchrun(
            2,
            "train",
            XOR,
            f"run.dir={tmp_path}",
            *ARGS,
            extra=(f"--max-restarts={restarts}",),
            script=WORKER,
            env=clean_env(CHAOS_PLAN=json.dumps(plan)),
            timeout=240,
        )
        expected = -9 if ends_in_job_kill else 0  # the first command dies with its agent
        assert result.returncode == expected, f"{said}\n{result.stderr[-4000:]}"
        stderr.append(result.stderr)
    everything = "".join(stderr)
    # Each worker kill: the survivor ends with one line naming the lost rank and the checkpoint it resumes
    # from, and no traceback anywhere (torchrun's own included: no command failed).
    lost = [line for line in everything.splitlines() if "distrain: error: lost rank" in line]
    assert len(lost) == NUM_WORKER_KILLS, f"{said}\n{everything[-4000:]}"
    # (a kill before the first save finished: "no checkpoint was complete yet", the restart begins anew)
    resumes = ("resumes from the newest complete checkpoint", "no checkpoint was complete yet")
    assert all(any(r in line for r in resumes) for line in lost), f"{said}\n{lost}"
    assert "Traceback" not in everything, f"{said}\n{everything[-4000:]}"

    assert_bitwise(newest_weights(reference), newest_weights(tmp_path))
    ref, got = records(reference), records(tmp_path)
    assert [(r["epoch"], r["split"]) for r in got] == [(r["epoch"], r["split"]) for r in ref], said
    for a, b in zip(ref, got):
        assert a["samples"] == b["samples"] and a["accuracy"] == b["accuracy"], said
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12), said
    # Every save is there and verifies (one a kill cut short was written again by the attempt after it).
    kept = assert_checkpoints_verify(tmp_path)
    assert [p.name for p in kept] == [p.name for p in assert_checkpoints_verify(reference)], said


@pytest.mark.parametrize("lost", [1, 0], ids=["worker-lost", "writer-lost"])
def test_the_survivor_of_a_lost_peer_says_so_in_one_line(tmp_path, lost):
    # No restarts: the survivor's whole stderr (torchrun writes each worker's to a file of its own) is the
    # account a person reads. Rank 1 dies after step 33, or rank 0 (the one that writes checkpoints).
    run, logs = tmp_path / "run", tmp_path / "logs"
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={run}",
        *ARGS,
        extra=(f"--log-dir={logs}", "--redirects=3"),
        script="tests/helpers/kill_at_step.py",
        env=clean_env(KILL_STEP="33", KILL_RANK=str(lost)),
    )
    assert result.returncode != 0
    survivor = 1 - lost
    (worker_err,) = logs.glob(f"*/attempt_0/{survivor}/stderr.log")
    lines = worker_err.read_text().splitlines()
    # The saves before the kill: steps 7, 14, 20 (the epoch's end), 21 and 28. Rank 0 waits for its last
    # background write before it speaks; a killed rank 0 may have left step 28's unfinished.
    newest = [run / "checkpoints" / f"step-000000{step}.pt" for step in ((28,) if lost == 1 else (28, 21))]
    assert len(lines) == 1, lines
    said = re.fullmatch(
        rf"\[rank {survivor}\] distrain: error: lost rank {lost} \((.*)\); nothing is lost: torchrun "
        r"--max-restarts, a SLURM requeue or the same command again resumes from the newest complete "
        r"checkpoint, (.*)",
        lines[0],
    )
    assert said and Path(said[2]) in newest and Path(said[2]) == find_resumable(run), lines[0]
    assert "Connection" in said[1] or "Timed out" in said[1]  # gloo's own words, with the peer's address
    assert "exitcode  : 4 (pid" in result.stderr  # torchrun's summary: exit status 4, and the line with it
    assert f"traceback : [rank {survivor}] distrain: error: lost rank {lost}" in result.stderr
    # Every save verifies; the one a killed rank 0 was writing may lack its manifest (a resume skips it).
    assert_checkpoints_verify(run, newest_may_be_unfinished=lost == 0)
