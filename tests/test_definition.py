"""distrain/loop/definition.py: what fit was given is recorded (definition.json, every checkpoint) and a
resume that differs is refused naming it; fit twice in one process on one run.dir never returns the first
run's figures as new."""

import json
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import distrain
from distrain.errors import ArgumentError, ConfigError
from distrain.loop.definition import RunDefinition

SAVED = {
    "model": {"class": "m.Net", "parameters": {"w": [4, 2], "b": [4]}},
    "optimizer": {
        "class": "torch.optim.sgd.SGD",
        "hyperparameters": {"lr": 0.1, "momentum": 0},
        "groups": [{"parameters": 2}],
    },
    "loss": "cross_entropy",
    "data": {"train": 640, "test": 101},
    "step": "distrain",
    "scheduler": "torch.optim.lr_scheduler.LambdaLR",
    "callbacks": [],
    "metrics": [],
}


def changed(part, value, given=()):
    values = json.loads(json.dumps(SAVED))
    values[part] = value
    return RunDefinition(values, {p: "train_data" if p == "data" else p for p in given})


def test_an_optimizer_given_to_fit_that_differs_is_refused_naming_the_argument():
    other = {**SAVED["optimizer"], "class": "torch.optim.adam.Adam"}
    with pytest.raises(ArgumentError) as info:
        changed("optimizer", other, given=["optimizer"]).check_resumable(SAVED, "run/checkpoints/step-1.pt")
    message = str(info.value)
    assert message.startswith("fit(optimizer=...): differs from the run being resumed (run/checkpoints/step-1.pt)")
    assert '"torch.optim.sgd.SGD" in the checkpoint, "torch.optim.adam.Adam" now' in message
    assert "checkpoint.resume=never" in message and info.value.key == "optimizer"


def test_what_the_config_built_is_named_by_its_key():
    with pytest.raises(ConfigError) as info:
        changed("model", {"class": "m.Net", "parameters": {"w": [8, 2], "b": [8]}}).check_resumable(SAVED, "p")
    assert not isinstance(info.value, ArgumentError) and info.value.key == "model"
    assert "model.parameters.w: [4, 2] in the checkpoint, [8, 2] now" in str(info.value)
    with pytest.raises(ArgumentError, match=r"fit\(train_data=...\).*data.train: 640 in the checkpoint, 600 now"):
        changed("data", {"train": 600, "test": 101}, given=["data"]).check_resumable(SAVED, "p")


def test_metrics_may_change_and_a_hyperparameter_on_one_side_only_is_no_difference(caplog):
    newer_torch = {**SAVED["optimizer"], "hyperparameters": {"lr": 0.1, "momentum": 0, "decoupled": False}}
    changed("optimizer", newer_torch).check_resumable(SAVED, "p")
    with caplog.at_level(logging.INFO, logger="distrain"):
        changed("metrics", ["f1"]).check_resumable(SAVED, "p")
    assert "resuming with a changed metrics" in caplog.text
    changed("loss", "nll").check_resumable(None, "p")  # a checkpoint from before definitions: not compared
    # The script's class run as a script (__main__.Net) and imported from it (m.Net) is one class.
    changed("model", {**SAVED["model"], "class": "__main__.Net"}).check_resumable(SAVED, "p")
    with pytest.raises(ConfigError, match="lr: 0.1 in the checkpoint, 0.2 now"):
        changed("optimizer", {**SAVED["optimizer"], "hyperparameters": {"lr": 0.2, "momentum": 0}}).check_resumable(
            SAVED, "p"
        )


def xor(n, seed):
    g = torch.Generator().manual_seed(seed)
    corners = torch.randint(0, 2, (n, 2), generator=g).float()
    return TensorDataset(corners + 0.1 * torch.randn(n, 2, generator=g), (corners.sum(dim=1) == 1).long())


def test_fit_twice_with_another_optimizer_is_refused_or_trains_afresh_never_old_figures(tmp_path, capsys):
    train, test = xor(640, 1), xor(101, 2)

    def cfg(*overrides):
        base = {
            "seed": 0,
            "run": {"dir": str(tmp_path)},
            "data": {"global_batch_size": 64},
            "trainer": {"epochs": 2},
            "log": {"plots": False, "loggers": []},
        }
        return distrain.load_config(base, list(overrides))

    def fit(make_optimizer, *overrides):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        return distrain.fit(
            cfg(*overrides), model=model, train_data=train, test_data=test, optimizer=make_optimizer(model)
        )

    sgd = fit(lambda m: torch.optim.SGD(m.parameters(), lr=0.5))
    assert sgd.trained and sgd.global_step == 20
    recorded = json.loads((tmp_path / "definition.json").read_text())
    assert recorded["optimizer"]["class"] == "torch.optim.sgd.SGD" and recorded["data"] == {"train": 640, "test": 101}
    assert recorded["model"]["parameters"]["0.weight"] == [8, 2]

    with pytest.raises(ArgumentError, match=r"^fit\(optimizer=...\): differs .*torch.optim.adam.Adam"):
        fit(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    assert json.loads((tmp_path / "definition.json").read_text()) == recorded  # the refused call changed nothing

    adam = fit(lambda m: torch.optim.Adam(m.parameters(), lr=0.01), "checkpoint.resume=never")  # asked: afresh
    assert adam.trained and adam.global_step == 20 and adam.test != sgd.test
    assert json.loads((tmp_path / "definition.json").read_text())["optimizer"]["class"] == "torch.optim.adam.Adam"

    capsys.readouterr()
    again = fit(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))  # finished: nothing to train
    assert not again.trained and again["trained"] is False and again.test == adam.test
    printed = capsys.readouterr().out  # the distrain logger's lines (rank 0: stdout)
    assert "nothing to train" in printed and "result.trained is False" in printed
    figures = f"test loss {adam.test['loss']:.4g}"
    assert f"not trained by this call: the finished run's figures (epoch 2, global step 20): {figures}" in printed
