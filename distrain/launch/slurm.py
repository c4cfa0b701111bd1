"""SLURM specifics: a run directory per array task, and requeueing the job after a saved stop.

Requeue policy (global rank 0, after the checkpoint is complete and every rank has stopped):
- the stop came from `trainer.requeue_signal` (default SIGUSR2) inside a SLURM job: this is SLURM's
  warning before the time limit or a preemption (`#SBATCH --signal=USR2@N`), or a user's
  `scancel --signal=USR2`; the job is requeued with `scontrol requeue`, and its next run resumes by itself
  (checkpoint.resume: auto; SLURM_RESTART_COUNT says which run it is);
- SIGTERM or SIGINT (a plain `scancel`, Ctrl-C): saved, not requeued; the user asked it to end;
- `scontrol` missing (common in containers) or failing: the checkpoint is saved, the log says how to
  resubmit, and the exit status is EXIT_RESUBMIT (75, EX_TEMPFAIL: "try again"), which wrappers can
  test for to resubmit the same command.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
from typing import Mapping

log = logging.getLogger("distrain")

EXIT_RESUBMIT = 75


def resolve_run_dir(run_dir: str, environ: Mapping[str, str]) -> str:
    """In an array job each task gets its own run directory: `{array_task}` in run.dir is replaced by the
    task id, or, without the placeholder, `array-<id>` is appended as a sub-directory."""
    task = environ.get("SLURM_ARRAY_TASK_ID")
    if "{array_task}" in run_dir:
        return run_dir.replace("{array_task}", task if task is not None else "0")
    return f"{run_dir.rstrip('/')}/array-{task}" if task is not None else run_dir


def job_to_requeue(environ: Mapping[str, str]) -> str | None:
    """The id `scontrol requeue` needs: ARRAYJOB_TASK for an array task, else SLURM_JOB_ID."""
    if "SLURM_ARRAY_JOB_ID" in environ and "SLURM_ARRAY_TASK_ID" in environ:
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID")


def maybe_requeue(signum: int, requeue_signal: str, environ: Mapping[str, str]) -> int:
    """Requeue the SLURM job if the stop was the requeue signal; return the process exit status."""
    stopped_by_signal = 128 + signum
    job = job_to_requeue(environ)
    if job is None or signum != signal.Signals[requeue_signal]:
        return stopped_by_signal
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.error(
            "%s received in SLURM job %s, but scontrol is not on PATH (as in many containers), so the "
            "job cannot requeue itself. The checkpoint is saved: resubmit the same sbatch command and "
            "it resumes. Exiting with status %d.",
            requeue_signal,
            job,
            EXIT_RESUBMIT,
        )
        return EXIT_RESUBMIT
    result = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log.error(
            "scontrol requeue %s failed (%s). The checkpoint is saved: resubmit the same sbatch command "
            "and it resumes. Exiting with status %d.",
            job,
            result.stderr.strip() or result.returncode,
            EXIT_RESUBMIT,
        )
        return EXIT_RESUBMIT
    restarts = environ.get("SLURM_RESTART_COUNT", "0")  # absent on a job's first run
    log.info(
        "requeued SLURM job %s (this was run %d of it); it resumes from the checkpoint when it starts again",
        job,
        int(restarts) + 1,
    )
    return stopped_by_signal
