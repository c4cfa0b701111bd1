"""distrain/reporting/loggers.py and the built-in loggers, one at a time (TensorBoard's files read back with
TensorBoard's own reader, the CSV file with the csv module), W&B's default mode from patched environments,
and a user's logger by import path receiving what metrics.jsonl holds, in one short in-process run."""

import csv

import pytest
import torch
from helpers.runs import records
from torch import nn
from torch.utils.data import TensorDataset

import distrain
from distrain.config.schema import WandbConfig
from distrain.errors import ConfigError
from distrain.reporting.csv_log import CSVLogger
from distrain.reporting.tensorboard import TensorBoardLogger
from distrain.reporting.wandb_run import resolve_mode


def tensorboard_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_files_read_back_and_a_resume_hides_the_steps_it_rewrites(tmp_path):
    first = TensorBoardLogger(tmp_path)
    for step in (10, 20, 30):
        first.log_scalars(step, {"train/step_loss": step / 100, "lr": 0.1})
    first.close()
    assert tensorboard_scalars(tmp_path / "tensorboard", "lr") == [(s, pytest.approx(0.1)) for s in (10, 20, 30)]
    # Resumed from a checkpoint at step 20: step 30 is computed again, and only the new value is shown.
    again = TensorBoardLogger(tmp_path, start_step=20)
    again.log_scalars(30, {"train/step_loss": 0.5})
    again.close()
    assert tensorboard_scalars(tmp_path / "tensorboard", "train/step_loss") == [
        (10, pytest.approx(0.1)),
        (20, pytest.approx(0.2)),
        (30, pytest.approx(0.5)),
    ]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_widens_for_new_names_and_drops_rows_after_the_resume_point(tmp_path):
    first = CSVLogger(tmp_path)
    first.log_scalars(10, {"train/step_loss": 0.5, "lr": 0.1})
    first.log_scalars(20, {"train/step_loss": 0.25, "lr": 0.1})
    first.log_scalars(20, {"epoch": 0, "test/accuracy": 0.75})  # an epoch row: new columns
    first.log_scalars(30, {"train/step_loss": 0.125, "lr": 0.1})
    rows = read_csv(tmp_path / "scalars.csv")
    assert list(rows[0]) == ["step", "train/step_loss", "lr", "epoch", "test/accuracy"]
    assert [r["step"] for r in rows] == ["10", "20", "20", "30"]
    assert rows[0]["test/accuracy"] == "" and float(rows[2]["test/accuracy"]) == 0.75
    CSVLogger(tmp_path, start_step=20)  # a resume from step 20: step 30 will be written again
    assert [r["step"] for r in read_csv(tmp_path / "scalars.csv")] == ["10", "20", "20"]
    CSVLogger(tmp_path, start_step=0)  # a fresh start in the same directory (checkpoint.resume=never)
    assert read_csv(tmp_path / "scalars.csv") == []


@pytest.mark.parametrize(
    "mode,environ,expected,says",
    [
        ("auto", {}, "disabled", "no API key"),  # no account: off, with the line saying how to turn it on
        ("auto", {"WANDB_API_KEY": "k" * 40}, "online", None),
        ("auto", {"WANDB_MODE": "offline"}, "offline", None),
        ("auto", {"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "offline", None),
        ("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40}, "disabled", None),
        ("offline", {}, "offline", None),
        ("disabled", {"WANDB_API_KEY": "k" * 40}, "disabled", None),
    ],
)
def test_wandb_is_on_only_when_set_up(tmp_path, mode, environ, expected, says):
    environ = {"HOME": str(tmp_path), **environ}  # no ~/.netrc of the machine's user
    found, note = resolve_mode(WandbConfig(mode=mode), environ)
    assert found == expected
    assert (note is not None and says in note and "wandb.mode=offline" in note) if says else note is None


def test_wandb_login_counts_as_credentials(tmp_path):
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_mode(WandbConfig(), {"HOME": str(tmp_path)}) == ("online", None)


def test_an_unknown_logger_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as info:
        distrain.load_config({"data": {"global_batch_size": 8}, "trainer": {"epochs": 1}}, ["log.loggers=[tensorbord]"])
    assert info.value.key == "log.loggers" and "did you mean 'tensorboard'" in str(info.value)


class Recorder:
    """A user's logger: what it is handed, kept (test_loggers:Recorder in log.loggers)."""

    made: list["Recorder"] = []

    def __init__(self, run_dir, start_step):
        self.run_dir, self.start_step = run_dir, start_step
        self.scalars, self.epochs, self.closed = [], [], False
        Recorder.made.append(self)

    def log_scalars(self, step, values):
        self.scalars.append((step, dict(values)))

    def log_epoch(self, epoch, step, records):
        self.epochs.append((epoch, step, records))

    def close(self):
        self.closed = True


def test_every_logger_gets_the_step_scalars_and_the_epoch_records(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    cfg = distrain.load_config(
        {
            "run": {"dir": str(tmp_path)},
            "data": {"global_batch_size": 32},
            "optim": {"lr": 0.1},
            "trainer": {"epochs": 2},
            "log": {"plots": False, "every_steps": 4, "loggers": ["csv", "test_loggers:Recorder"]},
        }
    )
    Recorder.made.clear()
    distrain.fit(cfg, model=nn.Linear(2, 2), train_data=TensorDataset(x, y), test_data=TensorDataset(x, y))
    printed = capsys.readouterr().out  # the distrain logger's lines (rank 0: stdout)
    (mine,) = Recorder.made
    assert mine.run_dir == tmp_path and mine.start_step == 0 and mine.closed
    steps = [(s, v) for s, v in mine.scalars if "train/step_loss" in v]
    assert [s for s, _ in steps] == [4, 8, 12, 16] and all(
        {"lr", "samples_per_s", "grad_norm"} <= set(v) for _, v in steps
    )
    # The epoch's figures: as scalars, and as the very records of metrics.jsonl.
    assert [records for _, _, records in mine.epochs] == [
        [r for r in records(tmp_path) if r["epoch"] == epoch] for epoch in (0, 1)
    ]
    epoch_rows = [(s, v) for s, v in mine.scalars if "test/accuracy" in v]
    assert [(s, v["test/accuracy"]) for s, v in epoch_rows] == [
        (r["global_step"], r["accuracy"]) for r in records(tmp_path, "test")
    ]
    # The same figures in the CSV logger's file; W&B (the default list's) is not asked for here.
    rows = [r for r in read_csv(tmp_path / "scalars.csv") if r["test/accuracy"]]
    assert [float(r["test/accuracy"]) for r in rows] == [r["accuracy"] for r in records(tmp_path, "test")]
    assert "epoch 1 |" in printed and "W&B" not in printed and not (tmp_path / "wandb").exists()
