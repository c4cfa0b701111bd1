"""Early stopping and the convergence rule: unit behaviour, and all ranks stopping together."""

import json

import pytest
from helpers.runs import XOR, newest_payload, records, run_torchrun

from distrain.checkpoint.store import list_checkpoints, load_payload
from distrain.config.parse import load_config
from distrain.config.schema import StopConfig
from distrain.loop.stopping import Stopper
from distrain.loop.trainer import train
from distrain.reporting.figures import EpochMetrics


def m(loss, acc=0.5):
    return EpochMetrics({"loss": loss, "accuracy": acc}, 10)


def epoch(train_loss, val_loss, val_acc=0.5):
    return {"train": m(train_loss), "val": m(val_loss, val_acc)}


def test_patience_counts_epochs_without_improvement_beyond_min_delta():
    s = Stopper(StopConfig(patience=2, monitor="val_loss", min_delta=0.01))
    verdicts = [s.update(epoch(1, val)) for val in (1.0, 0.95, 0.945, 0.944)]
    assert verdicts[:3] == [None, None, None] and "did not improve" in verdicts[3]


def test_accuracy_is_maximised():
    s = Stopper(StopConfig(patience=1, monitor="val_accuracy"), higher_is_better=True)
    assert s.update(epoch(1, 1, 0.5)) is None and s.update(epoch(1, 1, 0.6)) is None
    assert s.update(epoch(1, 1, 0.6)) is not None


def test_convergence_window():
    s = Stopper(StopConfig(window=3, threshold=0.01))
    verdicts = [s.update(epoch(loss, 1)) for loss in (1.0, 0.5, 0.505, 0.501)]
    # windows: [1.0] [1.0 .5] [1.0 .5 .505] (spread .5), then [.5 .505 .501] (spread .005 <= .01)
    assert verdicts[:3] == [None, None, None]
    assert verdicts[3].startswith("converged")


def test_state_round_trips():
    s = Stopper(StopConfig(patience=3, window=2))
    s.update(epoch(1, 0.5))
    t = Stopper(StopConfig(patience=3, window=2))
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert t.state_dict() == s.state_dict()


@pytest.mark.slow
def test_two_ranks_stop_together_and_a_rerun_stays_stopped(tmp_path):
    args = [
        "train",
        XOR,
        f"run.dir={tmp_path}",
        "trainer.epochs=50",
        "stop.window=3",
        "stop.threshold=0.02",
        "checkpoint.every_epochs=1",
    ]
    result = run_torchrun(2, *args)
    assert result.returncode == 0, result.stderr
    epochs = sorted({r["epoch"] for r in records(tmp_path)})
    assert epochs == list(range(len(epochs))) and len(epochs) < 50
    assert "stopping after epoch" in result.stdout
    last = newest_payload(tmp_path)
    assert last["stopper"]["stopped"].startswith("converged") and last["epoch"] == len(epochs)
    # Resuming a stopped run trains no further.
    again = run_torchrun(2, *args)
    assert again.returncode == 0 and sorted({r["epoch"] for r in records(tmp_path)}) == epochs


def test_keep_best_keeps_the_best_by_the_monitor(tmp_path):
    train(
        load_config(
            XOR,
            [
                f"run.dir={tmp_path}",
                "trainer.epochs=6",
                "checkpoint.every_epochs=1",
                "checkpoint.keep_last=1",
                "checkpoint.keep_best=2",
                "checkpoint.monitor=val_loss",
                "data.val_fraction=0.2",
                "optim.lr=0.02",
            ],
        ),
        environ={},
    )
    folder = tmp_path / "checkpoints"
    tests = {r["global_step"]: r["loss"] for r in records(tmp_path, "val")}
    best_two = sorted(tests, key=tests.get)[:2]
    assert sorted(p.name for p in folder.glob("best-*.pt")) == sorted(f"best-step-{s:08d}.pt" for s in best_two)
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000096.pt"]  # keep_last=1 still holds
    for step in best_two:  # the links are complete, loadable checkpoints
        assert load_payload(folder / f"best-step-{step:08d}.pt")["global_step"] == step
