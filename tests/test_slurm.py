"""SLURM: requeue policy (no cluster needed), then real sbatch jobs on a real single-node SLURM cluster
started by the `slurm` fixture (munge + slurmctld + slurmd from Debian's packages; .ci/run installs them).

The sbatch commands here are the ones the docs show (test_docs_show_the_commands_tested_here).
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.runs import PYTHON, REPO, assert_bitwise, clean_env, newest_weights, run_torchrun

from distrain.checkpoint.store import find_resumable
from distrain.launch.slurm import EXIT_RESUBMIT, job_to_requeue, maybe_requeue, resolve_run_dir

# One worker runs both SLURM modules: the clusters share munged (started by whichever comes first).
pytestmark = pytest.mark.xdist_group("slurm")

# How the tests run the shipped one-node GPU script on the CPU-only test cluster: the same script, with
# sbatch options overriding its GPU lines. docs/pages/launching.md shows these exact lines.
SBATCH_SRUN = (
    "sbatch --partition=debug --ntasks-per-node=2 --gres=none --cpus-per-task=1 slurm/train.sbatch configs/xor.yaml"
)
SBATCH_CPU = "sbatch --partition=debug slurm/train_cpu.sbatch configs/xor.yaml"
SBATCH_TORCHRUN = (
    "GPUS_PER_NODE=2 sbatch --partition=debug --gres=none --cpus-per-task=2 "
    "slurm/train_torchrun.sbatch configs/xor.yaml"
)
SBATCH_ARRAY = "sbatch --partition=debug --array=0-1 --ntasks-per-node=1 slurm/train_cpu.sbatch configs/xor.yaml"
SBATCH_SCRIPT = (
    "sbatch --partition=debug --ntasks-per-node=2 --gres=none --cpus-per-task=1 "
    "slurm/train.sbatch examples/xor_tutorial.py examples/xor.yaml"
)
PREEMPT = "sbatch --partition=urgent --ntasks=2 --wrap 'sleep 1'"
SCANCEL = "scancel --signal=USR2 JOBID"
SCANCEL_FULL = "scancel --signal=USR2 --full JOBID"  # the steps and the batch shell
SCANCEL_BATCH = "scancel --signal=USR2 --batch JOBID"  # the batch shell only, as #SBATCH --signal=B:USR2@N


# ------------------------------------------------------------------------------- no cluster needed


def test_run_dir_per_array_task():
    assert resolve_run_dir("runs/x", {}) == "runs/x"
    assert resolve_run_dir("runs/x", {"SLURM_ARRAY_TASK_ID": "3"}) == "runs/x/array-3"
    assert resolve_run_dir("runs/x-{array_task}", {"SLURM_ARRAY_TASK_ID": "3"}) == "runs/x-3"


def test_job_to_requeue():
    assert job_to_requeue({"SLURM_JOB_ID": "12"}) == "12"
    assert job_to_requeue({"SLURM_JOB_ID": "13", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "1"}) == "12_1"
    assert job_to_requeue({}) is None


def test_requeue_policy_without_scontrol(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no scontrol, as in many containers
    job = {"SLURM_JOB_ID": "7"}
    assert maybe_requeue(signal.SIGUSR2, "SIGUSR2", job) == EXIT_RESUBMIT
    assert maybe_requeue(signal.SIGTERM, "SIGUSR2", job) == 128 + signal.SIGTERM  # a user's cancel
    assert maybe_requeue(signal.SIGUSR2, "SIGUSR2", {}) == 128 + signal.SIGUSR2  # not in SLURM


# ---------------------------------------------------------------------------------- real cluster


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if not shutil.which("slurmctld"):
        if os.environ.get("CI"):
            pytest.fail("SLURM is not installed; .ci/run installs munge, slurmctld, slurmd and slurm-client")
        pytest.skip("SLURM is not installed (apt-get install munge slurmctld slurmd slurm-client)")
    slurm_dir = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_DIR": str(slurm_dir)}
    scripts = REPO / "tests" / "slurm_cluster"
    subprocess.run(["bash", str(scripts / "start_slurm.sh")], env=env, check=True, capture_output=True)
    try:
        yield str(slurm_dir / "slurm.conf")
    finally:
        subprocess.run(["bash", str(scripts / "stop_slurm.sh")], env=env, capture_output=True)


def job_env(slurm_conf, **extra):
    # The job inherits the submitter's environment: the venv's python and the cluster's config.
    return clean_env(SLURM_CONF=slurm_conf, DISTRAIN_PYTHON=PYTHON, **extra)


def sbatch(command, slurm_conf, *args, wait=True, out=None):
    """Run one of the docs' sbatch command lines (docs/pages/launching.md), with an output file and extra
    overrides added."""
    words = command.split()
    env_extra = {}
    while "=" in words[0]:  # leading NAME=value words are environment for sbatch (and so for the job)
        name, value = words.pop(0).split("=", 1)
        env_extra[name] = value
    opts = ["--parsable"]
    if out:
        opts.append(f"--output={out}")
    result = subprocess.run(
        [words[0], *opts, *words[1:], *args],
        cwd=REPO,
        env=job_env(slurm_conf, **env_extra),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if wait and result.returncode == 0:
        # Like `sbatch --wait`, whose polling interval grows (measured: it returned ~30 s after a 10 s job had
        # ended), but polled every 0.2 s: exit status 0 when every task of the job completed.
        states = _final_states(result.stdout.strip().split(";")[0], slurm_conf)
        result.returncode = 0 if set(states) == {"COMPLETED"} else 1
    return result


def _final_states(job, slurm_conf, timeout=600):
    """The JobState of every task of `job` (an array has several) once none of them is still going."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        shown = subprocess.run(
            ["scontrol", "show", "job", job], env=job_env(slurm_conf), capture_output=True, text=True
        ).stdout
        states = re.findall(r"JobState=(\w+)", shown)
        if states and all(state in FINAL for state in states):
            return states
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not finish in {timeout}s")


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def reference(xor30_torchrun):
    """torchrun with 2 processes, XOR for 30 epochs: the uninterrupted run every SLURM job is compared with."""
    return xor30_torchrun


@pytest.mark.slow
@pytest.mark.parametrize(
    "command,source,engine",
    [(SBATCH_SRUN, "slurm", "native"), (SBATCH_TORCHRUN, "torchrun", "native"), (SBATCH_SRUN, "slurm", "accelerate")],
    ids=["srun-per-task", "srun-torchrun", "srun-per-task-accelerate"],
)
def test_slurm_job_matches_torchrun(slurm, reference, tmp_path, command, source, engine):
    result = sbatch(
        command, slurm, f"run.dir={tmp_path / 'run'}", "trainer.epochs=30", f"engine={engine}", out=tmp_path / "job.out"
    )
    log = (tmp_path / "job.out").read_text()
    assert result.returncode == 0, log
    assert f"| {source} | 2 process(es)" in log and f"engine {engine}" in log
    assert_bitwise(newest_weights(reference), newest_weights(tmp_path / "run"))


def _wait_for_epochs(run_dir, epochs, timeout=120):
    metrics = Path(run_dir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2 * epochs:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {epochs} epochs in {metrics} after {timeout}s")


def _wait_until_gone(job, slurm_conf, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = subprocess.run(
            ["scontrol", "show", "job", job], env=job_env(slurm_conf), capture_output=True, text=True
        ).stdout
        if "JobState=COMPLETED" in state or "JobState=FAILED" in state or "JobState=CANCELLED" in state:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish in {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("interruption", ["scancel-signal", "scancel-full", "scancel-batch", "preemption"])
def test_interrupted_job_requeues_resumes_and_matches(slurm, reference, tmp_path, interruption):
    run = tmp_path / "run"
    # The signal reaches training late (preemption waits for the scheduler to place the urgent job; a batch
    # shell relays it): on a fast machine the 30 XOR epochs (about 0.06 s each) could end first. A save every
    # step keeps the job busy for seconds and changes no figure (checkpoint cadence is outside the run's
    # definition; resume is exact mid-epoch).
    slower = ["checkpoint.every_steps=1"]
    submitted = sbatch(
        SBATCH_SRUN, slurm, f"run.dir={run}", "trainer.epochs=30", *slower, wait=False, out=tmp_path / "job.out"
    )
    job = submitted.stdout.strip()
    _wait_for_epochs(run, 3)
    scancel = {"scancel-signal": SCANCEL, "scancel-full": SCANCEL_FULL, "scancel-batch": SCANCEL_BATCH}
    if interruption in scancel:  # the signal to the steps only, to the batch shell and the steps, to the shell only
        subprocess.run(scancel[interruption].replace("JOBID", job).split(), env=job_env(slurm), check=True)
    else:  # a higher-priority partition takes the node; SLURM sends the job's --signal, then requeues it
        # From tmp_path: the --wrap job writes its slurm-N.out into the directory it is submitted from.
        subprocess.run(PREEMPT, shell=True, cwd=tmp_path, env=job_env(slurm), check=True, capture_output=True)
    state = _wait_until_gone(job, slurm)
    log = (tmp_path / "job.out").read_text()
    assert "JobState=COMPLETED" in state and "Restarts=1" in state, log
    assert "received SIGUSR2: saving a checkpoint" in log and "requeued SLURM job" in log
    assert f"SLURM job {job}, restart 1: resuming" in log and "resumed from" in log
    assert_bitwise(newest_weights(reference), newest_weights(run))


@pytest.mark.slow
def test_user_script_as_an_srun_job_matches_torchrun(slurm, tmp_path):
    """A user's script (its own model and Dataset, distrain.fit) under the shipped sbatch script, as is."""
    args = ["trainer.epochs=10", "checkpoint.every_epochs=5"]
    reference = run_torchrun(
        2, "examples/xor.yaml", f"run.dir={tmp_path / 'ref'}", *args, script="examples/xor_tutorial.py"
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    result = sbatch(SBATCH_SCRIPT, slurm, f"run.dir={tmp_path / 'run'}", *args, out=tmp_path / "job.out")
    log = (tmp_path / "job.out").read_text()
    assert result.returncode == 0, log
    assert "| slurm | 2 process(es)" in log and "test loss" in log
    a, b = torch.load(tmp_path / "ref" / "model.pt"), torch.load(tmp_path / "run" / "model.pt")
    assert_bitwise(a, b)


@pytest.mark.slow
def test_failing_job_reports_its_error_and_exits_nonzero(slurm, tmp_path):
    result = sbatch(SBATCH_CPU, slurm, f"run.dir={tmp_path / 'run'}", "optim.lrr=0.1", out=tmp_path / "job.out")
    log = (tmp_path / "job.out").read_text()
    assert result.returncode != 0
    assert "config key 'optim.lrr': unknown key" in log and "did you mean 'optim.lr'?" in log


@pytest.mark.slow
def test_array_tasks_get_their_own_run_directories(slurm, tmp_path):
    result = sbatch(SBATCH_ARRAY, slurm, f"run.dir={tmp_path / 'run'}", "trainer.epochs=2", out=tmp_path / "job-%a.out")
    assert result.returncode == 0, (tmp_path / "job-0.out").read_text()
    for task in (0, 1):
        assert find_resumable(tmp_path / "run" / f"array-{task}") is not None


def test_docs_show_the_commands_tested_here():
    readme = (REPO / "docs" / "pages" / "launching.md").read_text()
    for command in (
        SBATCH_SRUN,
        SBATCH_CPU,
        SBATCH_TORCHRUN,
        SBATCH_ARRAY,
        SBATCH_SCRIPT,
        PREEMPT,
        SCANCEL,
        SCANCEL_FULL,
        SCANCEL_BATCH,
    ):
        assert command in readme, command
