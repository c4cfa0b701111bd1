"""User errors reach the user: one line `distrain: error: ...` on stderr, exit 2, no traceback, under
torchrun too, whichever rank meets the error first (distrain/errors.py: report_user_error)."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest
from helpers.runs import XOR, clean_env, run_torchrun

from distrain.errors import ConfigError, UserError, _print_once, _report_marker, report_user_error

BAD = "optim.lr=abc"
LINE = "distrain: error: config key 'optim.lr': expected a number, got 'abc'"


def test_the_marker_is_the_torchrun_attempt_folder_or_the_slurm_step():
    attempt = "/tmp/torchelastic_x/none_y/attempt_0"
    assert _report_marker({"TORCHELASTIC_ERROR_FILE": f"{attempt}/1/error.json"}) == Path(
        attempt, "distrain-error-reported"
    )
    assert _report_marker({"TORCHELASTIC_ERROR_FILE": "/elsewhere/error.json"}) is None  # unknown layout
    srun = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}
    slurm = _report_marker(srun)
    assert slurm is not None and slurm.name == "distrain-error-reported-7.0"
    # One process (a batch script, an salloc shell, srun -n1): nothing to share, it prints alone.
    assert _report_marker({**srun, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert _report_marker({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "batch"}) is None
    assert _report_marker({}) is None and _report_marker({"SLURM_JOB_ID": "7"}) is None


def test_ranks_sharing_a_marker_print_an_agreed_error_once(tmp_path, capsys, monkeypatch):
    attempt = tmp_path / "attempt_0"
    for rank in ("1", "0"):  # rank 1 first: it prints, rank 0 sees that it did and stays silent
        (attempt / rank).mkdir(parents=True)
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / rank / "error.json"))
        report_user_error(ConfigError("optim.lr", "expected a number, got 'abc'"))
        assert LINE in (attempt / rank / "error.json").read_text()  # every rank's summary entry names it
    assert capsys.readouterr().err.splitlines() == [LINE]


def test_a_rank_that_never_hears_the_first_one_printed_prints_too(tmp_path, capsys):
    marker = tmp_path / "marker"
    marker.touch()  # made by a rank that was killed before it printed
    start = time.monotonic()
    _print_once("distrain: error: x", marker, wait_s=0.2)
    assert capsys.readouterr().err == "distrain: error: x\n" and time.monotonic() - start < 2


def test_a_marker_left_by_an_earlier_process_of_the_step_silences_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    marker.write_text("distrain: error: another\n")  # an earlier command's error in the same srun step
    _print_once("distrain: error: x", marker, wait_s=5)
    marker.write_text("distrain: error: x\n")
    os.utime(marker, (time.time() - 60, time.time() - 60))  # the same error, a minute ago
    _print_once("distrain: error: x", marker, wait_s=5)
    assert capsys.readouterr().err == "distrain: error: x\n" * 2
    _print_once("distrain: error: x", marker, wait_s=5)  # rewritten just now: a peer of this launch printed it
    assert capsys.readouterr().err == ""


def test_without_a_launcher_marker_rank_0_alone_prints_an_agreed_error(capsys, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    for var in ("SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        report_user_error(ConfigError("optim.lr", "expected a number, got 'abc'"))
        report_user_error(UserError("only mine"))  # not agreed: each rank that meets it says so
    assert capsys.readouterr().err.splitlines() == [
        LINE,
        "distrain: error: only mine",
        "[rank 1] distrain: error: only mine",
    ]


def _slow_rank_env(tmp_path: Path, rank: int) -> dict[str, str]:
    """An environment in which global rank `rank` starts 3 s late (a sitecustomize on PYTHONPATH): the other
    rank meets the config error first and exits, and torchrun's agent kills this one before it gets there."""
    site = tmp_path / f"slow{rank}"
    site.mkdir()
    code = f"import os, time\nif os.environ.get('RANK') == '{rank}':\n    time.sleep(3)\n"
    (site / "sitecustomize.py").write_text(code)
    return clean_env(PYTHONPATH=str(site))


@pytest.mark.parametrize("slow_rank", [0, 1])
def test_a_config_error_under_torchrun_is_printed_by_whichever_rank_meets_it_first(tmp_path, slow_rank):
    result = run_torchrun(2, "train", XOR, f"run.dir={tmp_path}", BAD, env=_slow_rank_env(tmp_path, slow_rank))
    assert result.returncode != 0
    assert result.stderr.splitlines().count(LINE) == 1, result.stderr  # its own line, once
    lines = result.stderr.splitlines()
    assert lines.index(LINE) < lines.index("Failures:")  # above torchrun's failure summary, not inside it
    assert "distrain/" not in "".join(l for l in lines if l.lstrip().startswith("File "))  # no traceback of ours


@pytest.mark.slow
def test_a_config_error_under_torchrun_reaches_stderr_in_20_of_20_runs(tmp_path):
    def once(i: int) -> str:
        return run_torchrun(2, "train", XOR, f"run.dir={tmp_path / str(i)}", BAD, timeout=120).stderr

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 4 torchruns at a time: about 25 s here
        stderrs = list(pool.map(once, range(20)))
    printed = [err.splitlines().count(LINE) for err in stderrs]
    assert printed == [1] * 20, next(err for err, n in zip(stderrs, printed) if n != 1)


@pytest.mark.slow
def test_an_error_met_by_one_rank_alone_is_printed_with_its_rank(tmp_path):
    script = tmp_path / "one_rank.py"
    script.write_text(
        "import os, time\nimport distrain\nfrom distrain.errors import UserError\n\n\n"
        "def main():\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise UserError('data/part-1.npy does not exist on this node')\n"
        "    time.sleep(60)  # rank 0 finds nothing wrong: torchrun's agent ends it when rank 1 exits\n\n\n"
        "distrain.run_main(main)\n"
    )
    result = run_torchrun(2, script=str(script), timeout=60)
    assert result.returncode != 0
    line = "[rank 1] distrain: error: data/part-1.npy does not exist on this node"
    assert result.stderr.splitlines().count(line) == 1, result.stderr
