"""User-facing errors: the CLI prints these without a traceback and exits non-zero.

A `UserError` is something the person running distrain can fix (a config key, a file, an environment
variable). Anything else is a bug and keeps its traceback.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping


class UserError(Exception):
    """An error the user can fix (a config key, a file, a checkpoint, a launcher variable). `exit_code` is
    what the CLI exits with: 2, as for every user error (1 is left to bugs, which keep their traceback)."""

    exit_code = 2
    agreed = False  # every rank raises the same error (printed once: see report_user_error)
    per_rank = False  # each rank's own account: printed by every rank, rank 0's with its rank too

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHINT: {self.hint}"


class ConfigError(UserError):
    """A bad config key or value. Raised before any training starts (exit status 2), alike on every rank:
    each reads the same config."""

    exit_code = 2
    agreed = True

    def __init__(self, key: str, problem: str, hint: str | None = None):
        super().__init__(f"config key '{key}': {problem}", hint)
        self.key = key
        self.problem = problem


class ArgumentError(ConfigError):
    """A bad argument of distrain.fit (the model, data, loss, metrics or optimizer it was handed), named as
    the caller wrote it: `fit(model=...): ...` rather than a config key. A ConfigError (exit status 2,
    alike on every rank) whose `key` is the argument's name."""

    def __init__(self, argument: str, problem: str, hint: str | None = None):
        UserError.__init__(self, f"fit({argument}=...): {problem}", hint)
        self.key = argument
        self.problem = problem


class EnvError(UserError):
    """Launcher variables (torchrun, SLURM) that are missing or contradict each other (exit status 2)."""

    exit_code = 2

    def __init__(self, variable: str, problem: str, hint: str | None = None):
        super().__init__(f"environment variable {variable}: {problem}", hint)
        self.variable = variable


class WriteError(UserError):
    """A file of the run could not be written (disk full, no permission, read-only file system). Nothing
    half-written is left behind and what was there before is intact (exit status 2)."""

    exit_code = 2

    def __init__(self, path: object, exc: OSError):
        cause = exc.strerror or str(exc)
        hint = {
            28: "free space (or point run.dir at a larger disk) and run the same command again: it resumes "
            "from the newest good checkpoint",
            122: "free space within your quota and run the same command again: it resumes",
            13: "make the folder writable, or choose another run.dir",
            30: "choose a run.dir on a writable file system",
        }.get(exc.errno or 0)
        super().__init__(f"cannot write {path}: {cause}", hint)
        self.path = path


class Diverged(UserError):
    """The loss or the weights became NaN or Inf and trainer.on_nonfinite is `stop` (exit status 3: not a
    config error, but no bug either; nothing non-finite was saved)."""

    exit_code = 3
    agreed = True  # the ranks agree on it with one all-reduce


class LostPeer(UserError):
    """A collective failed because another rank is gone: its process died (connection closed or reset) or
    it stopped answering until dist.timeout_s. Not a bug and nothing to fix: each surviving rank says so
    in one line, with the checkpoint a restart resumes from (exit status 4)."""

    exit_code = 4
    per_rank = True  # each survivor says what it saw (which peer, when known)


class Hung(UserError):
    """No step finished on any rank for trainer.hang_timeout seconds: a rank is stuck, or the ranks called
    different collectives. The watchdog (distrain/launch/watchdog.py) prints one message for the job naming
    the rank(s) behind and where each one is; every rank exits with status 5, the newest complete checkpoint
    intact."""

    exit_code = 5


def report_user_error(exc: Exception) -> None:
    """One message for the whole job, not one per rank, printed by whichever rank meets the error first:
    errors every rank meets alike (config errors, verdicts the ranks agreed on) are printed once per node
    (under torchrun or srun) by the first rank of the node to report one, or else by global rank 0; any
    other is printed with its rank (rank 0's too when the error is each rank's own account, as a lost peer
    is). Under torchrun the message also goes to torchrun's error file, so its failure summary names the
    cause instead of "error_file: <N/A>".

    Why not "global rank 0 alone prints": torchrun's agent (and `srun --kill-on-bad-exit`) ends every
    worker as soon as one exits; when rank 1 found the error first and exited, rank 0 was killed before it
    printed, and the message was left only in torchrun's failure summary."""
    rank = os.environ.get("RANK", "0")
    agreed = getattr(exc, "agreed", False)
    per_rank = getattr(exc, "per_rank", False)
    plain = (rank == "0" or agreed) and not per_rank
    text = f"distrain: error: {exc}" if plain else f"[rank {rank}] distrain: error: {exc}"
    if not agreed:
        _print_flushed(text)
    else:
        marker = _report_marker(os.environ)
        if marker is None:
            if rank == "0":  # no launcher that ends the others early: rank 0 alone
                _print_flushed(text)
        else:
            _print_once(text, marker)
    # Every rank writes its own error file: torchrun's summary names the rank that exited first, and which
    # one that is races (the agent stops the others as soon as one exits).
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            with open(error_file, "w") as f:
                json.dump(
                    {
                        "message": {
                            "message": text,
                            "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))},
                        }
                    },
                    f,
                )
        except OSError:
            pass  # the summary then says <N/A>; the message above was printed anyway


def _print_flushed(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _report_marker(environ: Mapping[str, str]) -> Path | None:
    """A file the ranks of this node (and launch) share, whose creation elects the one that prints an agreed
    error; None when the launcher gives no such place, or runs one process (then it prints alone).

    torchrun: its per-attempt folder, the parent of every local rank's error-file folder
    (`.../attempt_0/<local rank>/error.json`), made fresh by each agent and each restart and removed with
    it. srun with several tasks: the node's temporary folder, named after the job and its step (a step's
    tasks are one launch; a marker left by an earlier process of the same step is told by its age and text:
    see `_print_once`)."""
    error_file = environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        attempt = Path(error_file).parent.parent
        return attempt / "distrain-error-reported" if attempt.name.startswith("attempt_") else None
    job, step = environ.get("SLURM_JOB_ID"), environ.get("SLURM_STEP_ID")
    tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
    if job and step and "SLURM_PROCID" in environ and tasks.isdigit() and int(tasks) > 1:
        return Path(tempfile.gettempdir()) / f"distrain-error-reported-{job}.{step}"
    return None


def _print_once(text: str, marker: Path, wait_s: float = 5.0, fresh_s: float = 30.0) -> None:
    """Print `text` if this rank is the first of those sharing `marker` to get here; the others wait (up to
    `wait_s`) until it has printed before they exit: their exit would have the launcher kill it while it
    prints. The first writes `text` into the marker once printed; a rank that finds another text there, or
    the same one older than `fresh_s` (an earlier process of the same srun step), prints too. So does one
    whose marker cannot be made (a read-only or missing folder): twice is better than never."""
    line = (text + "\n").encode()
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                found, age = marker.read_bytes(), time.time() - marker.stat().st_mtime
            except OSError:
                return  # removed with torchrun's attempt folder: the agent is done with this attempt
            if found == line and age < fresh_s:
                return  # the first rank printed it
            if found == line or (found and not line.startswith(found)):
                break  # an earlier process's message (another one, or this one long ago): not this one's
            time.sleep(0.02)
        _print_flushed(text)  # the first rank never said it printed (killed meanwhile): say it here too
        try:
            marker.write_bytes(line)
        except OSError:
            pass
        return
    except OSError:
        _print_flushed(text)
        return
    try:
        _print_flushed(text)
        os.write(fd, line)
    finally:
        os.close(fd)
