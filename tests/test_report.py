"""Metric logging: W&B offline files, TensorBoard event files and the CSV file read back and compared with
metrics.jsonl, one W&B run per job, W&B off by default without an account, plots, console output."""

import re
import struct
from pathlib import Path

import pytest
from helpers.runs import XOR, clean_env, records, run_cli, run_torchrun
from helpers.wandb_file import history, run_ids, summary


def wandb_files(run_dir):
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("wb")
    result = run_cli(
        "train",
        XOR,
        f"run.dir={run}",
        "trainer.epochs=5",
        "log.every_steps=10",
        "log.grad_norms=true",
        "log.loggers=[wandb, tensorboard, csv]",
        "wandb.mode=offline",
        env=clean_env(wandb=True),
        fresh=True,
    )
    assert result.returncode == 0, result.stderr
    return run, result


def test_a_logged_scalar_reaches_metrics_jsonl_tensorboard_wandb_and_csv(offline_run):
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = offline_run
    expected = [(r["global_step"], r["accuracy"]) for r in records(run, "test")]
    assert len(expected) == 5
    (path,) = wandb_files(run)
    assert [(r["_step"], r["test/accuracy"]) for r in history(path) if "test/accuracy" in r] == expected
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("test/accuracy")] == [
        (step, pytest.approx(value, abs=1e-7))
        for step, value in expected  # TensorBoard keeps float32
    ]
    step_losses = [(e.step, e.value) for e in events.Scalars("train/step_loss")]
    assert [s for s, _ in step_losses] == list(range(10, 101, 10))
    with open(run / "scalars.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), float(r["test/accuracy"])) for r in rows if r["test/accuracy"]] == expected
    wandb_losses = [(r["_step"], r["train/step_loss"]) for r in history(path) if "train/step_loss" in r]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in wandb_losses] == step_losses


def test_wandb_history_matches_metrics_jsonl(offline_run):
    run, _ = offline_run
    (path,) = wandb_files(run)  # wandb.mode=offline: one run file
    rows = history(path)
    step_rows = [r for r in rows if "train/step_loss" in r]
    assert [r["_step"] for r in step_rows] == list(range(10, 101, 10))
    for r in step_rows:
        assert {"lr", "samples_per_s", "step_time_s", "grad_norm", "grad_norm/linear1.weight"} <= set(r)
        assert r["lr"] == 0.1 and r["samples_per_s"] > 0 and r["grad_norm/linear1.weight"] > 0
    epoch_rows = [r for r in rows if "test/loss" in r]
    assert len(epoch_rows) == 5
    for row in epoch_rows:
        train = next(r for r in records(run, "train") if r["epoch"] == row["epoch"])
        test = next(r for r in records(run, "test") if r["epoch"] == row["epoch"])
        assert row["_step"] == train["global_step"] == 20 * (row["epoch"] + 1)  # one monotonic global step
        assert (row["train/loss"], row["train/accuracy"]) == (train["loss"], train["accuracy"])
        assert (row["test/loss"], row["test/accuracy"]) == (test["loss"], test["accuracy"])
        assert row["epoch_time_s"] > 0
    best = summary(path)
    assert best["best/test_accuracy"] == max(r["accuracy"] for r in records(run, "test"))
    assert best["best/test_loss"] == min(r["loss"] for r in records(run, "test"))
    assert run_ids(run) == {(run / "wandb.json").read_text().split('"')[3]}


def test_wandb_is_off_by_default_without_an_account_in_one_line(tmp_path):
    env = clean_env(wandb=True, NETRC=str(tmp_path / "no-netrc"))  # no `wandb login` of the machine's user
    # run.dir unset: the distrain command's run directory is runs/<config name>, under the working directory.
    result = run_cli("train", XOR, "run.dir=null", "trainer.epochs=1", "log.plots=false", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [l for l in result.stdout.splitlines() if "W&B" in l]
    assert line.startswith("W&B is off: no API key is configured") and "wandb.mode=offline" in line
    run = tmp_path / "runs" / "xor"
    assert records(run, "test") and "dir: " + str(Path("runs/xor")) in (run / "config.yaml").read_text()
    assert not (run / "wandb").exists() and not (run / "wandb.json").exists()
    assert "wandb:" not in result.stdout + result.stderr and len(result.stdout.splitlines()) <= 8


def test_plots_are_valid_pngs(offline_run, tmp_path):
    import matplotlib.image

    run, result = offline_run
    for name in ("loss.png", "accuracy.png"):
        data = (run / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 100 and height > 100
        assert matplotlib.image.imread(run / "plots" / name).shape[:2] == (height, width)
    again = run_cli("plot", str(run), str(run), "--out", str(tmp_path / "both"))
    assert again.returncode == 0 and sorted(p.name for p in (tmp_path / "both").iterdir()) == [
        "accuracy.png",
        "loss.png",
    ]
    bad = run_cli("plot", str(tmp_path))
    assert bad.returncode == 2 and "has no metrics.jsonl" in bad.stderr


def test_plotting_leaves_the_users_pyplot_alone(offline_run, tmp_path):
    # distrain.fit in a notebook: the user's backend and open figures are untouched by the run's plots.
    import matplotlib
    import matplotlib.pyplot as plt

    from distrain.reporting.plots import plot_runs

    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        figure = plt.figure()
        assert len(plot_runs([offline_run[0]], tmp_path / "p")) == 2
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [figure.number]
    finally:
        plt.close("all")
        matplotlib.use(backend)


def test_log_lines_without_a_terminal(offline_run):
    _, result = offline_run
    lines = [l for l in result.stdout.splitlines() if l.startswith("step ")]
    assert [int(l.split()[1]) for l in lines] == list(range(10, 101, 10))
    assert "samples/s" in lines[0] and "grad norm" in lines[0]


def test_progress_bar_when_asked(tmp_path):
    result = run_cli(
        "train",
        XOR,
        f"run.dir={tmp_path}",
        "trainer.epochs=2",
        "log.progress_bar=always",
        "log.every_steps=10",
        "wandb.mode=disabled",
    )
    assert result.returncode == 0 and "40/40" in result.stderr and "samples_s" in result.stderr
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb.json").exists()


def run_in_terminal(*args: str, columns: int = 120) -> str:
    """`python -m distrain ARGS` with stdout and stderr on a pseudo-terminal `columns` wide (the bar shows as
    in a user's terminal: log.progress_bar auto), and all it wrote there."""
    import fcntl
    import os
    import pty
    import select
    import signal
    import subprocess
    import termios
    import time

    from helpers.runs import PYTHON, REPO

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [PYTHON, "-m", "distrain", *args], stdout=slave, stderr=slave, env=clean_env(), cwd=REPO, start_new_session=True
    )
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    if proc.poll() is None and time.monotonic() >= deadline:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == 0, out.decode(errors="replace")
    return out.decode()


def test_the_bar_stays_whole_while_epoch_and_save_lines_print_above_it(tmp_path):
    out = run_in_terminal(
        "train", XOR, f"run.dir={tmp_path}", "trainer.epochs=3", "checkpoint.every_epochs=1", "log.every_steps=5"
    )
    # What the terminal shows between carriage returns and newlines: a bar's frame, a log line, a clearing.
    pieces = [p.strip() for p in out.replace("\r\n", "\n").replace("\r", "\n").split("\n") if p.strip()]
    bars = [p for p in pieces if re.search(r"\d+%\|.*\| \d+/60 \[", p)]  # tqdm's frame: 33%|███ | 20/60 [...]
    logs = [p for p in pieces if p.startswith(("epoch ", "saved "))]
    assert bars and [p.split()[1] for p in logs if p.startswith("epoch ")] == ["0", "1", "2"]
    spliced = [p for p in bars if "saved" in p or "epoch" in p or "loss" in p.split("]")[-1]]
    assert not spliced, f"log text inside a bar line: {spliced[:3]}"
    assert sum(p.startswith("saved ") for p in logs) >= 3
    assert all(p.startswith(("epoch ", "saved ")) for p in pieces if "saved runs" in p or "train loss" in p)


@pytest.mark.slow
def test_one_wandb_run_for_two_ranks_even_after_a_kill(tmp_path):
    env = clean_env(KILL_STEP="30", KILL_RANK="1", wandb=True)
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={tmp_path}",
        "trainer.epochs=3",
        "checkpoint.every_steps=7",
        "log.every_steps=5",
        "wandb.mode=offline",
        extra=("--max-restarts=1",),
        script="tests/helpers/kill_at_step.py",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = wandb_files(tmp_path)
    assert len(files) == 2  # the first attempt and the restart, both by rank 0 only
    assert len(run_ids(tmp_path)) == 1
    # The restart resumed from step 28 and continues the same run after the last step logged (30);
    # W&B's own service dies with the killed worker, so that attempt's file may hold only what it flushed.
    steps = [r["_step"] for r in history(files[1])]
    assert steps == sorted(steps) and steps[0] == 30 and steps[-1] == 60
