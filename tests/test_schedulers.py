"""Any torch scheduler: OneCycleLR given as fit(scheduler=...) and named by import path trains bitwise
alike on 1 and 2 processes (trainer.exact), and a run killed mid-epoch resumes onto the same curve;
ReduceLROnPlateau lowers the lr where its monitor says; each parameter group's lr is logged."""

import csv

import pytest
import torch
from helpers.runs import (
    XOR,
    assert_bitwise,
    clean_env,
    newest_payload,
    newest_weights,
    records,
    run_cli,
    run_torchrun,
)
from torch import nn
from torch.utils.data import TensorDataset

import distrain
from distrain.errors import ArgumentError, ConfigError

# XOR, 20 steps an epoch (2,500 samples, global batch 128), 4 epochs; every step's lr logged to scalars.csv.
ARGS = [
    "trainer.epochs=4",
    "trainer.exact=true",
    "log.every_steps=1",
    "log.loggers=[csv]",
    "log.plots=false",
    "checkpoint.every_steps=15",
    "checkpoint.every_epochs=0",
]
BY_PATH = ["schedule.name=torch.optim.lr_scheduler:OneCycleLR", "schedule.args.max_lr=0.5"]
SCRIPT = "tests/helpers/one_cycle.py"


def lr_rows(run_dir):
    """(step, lr) of every row of scalars.csv that logs an lr: the curve as the loggers saw it."""
    with open(run_dir / "scalars.csv", newline="") as f:
        return [(int(r["step"]), float(r["lr"])) for r in csv.DictReader(f) if r.get("lr")]


def figures(run_dir):
    timing = {"time_s", "train_time_s", "samples_per_s", "timestamp", "step_time_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records(run_dir)]


@pytest.fixture(scope="module")
def one_cycle_runs(tmp_path_factory):
    """One process, in this one: OneCycleLR by import path (the distrain command) and by fit(scheduler=)."""
    root = tmp_path_factory.mktemp("one_cycle")
    by_path = run_cli("train", XOR, f"run.dir={root / 'path'}", *ARGS, *BY_PATH)
    assert by_path.returncode == 0, by_path.stderr[-3000:]
    from helpers.one_cycle import one_cycle

    cfg = distrain.load_config(XOR, [f"run.dir={root / 'given'}", *ARGS, "wandb.mode=disabled"])
    distrain.fit(cfg, scheduler=one_cycle(cfg))
    return root


def test_one_cycle_by_import_path_and_by_fit_argument_are_one_curve(one_cycle_runs):
    path, given = one_cycle_runs / "path", one_cycle_runs / "given"
    assert_bitwise(newest_weights(path), newest_weights(given))
    curve = lr_rows(path)
    assert [step for step, _ in curve] == list(range(1, 81)) and curve == lr_rows(given)
    steps = [lr for _, lr in curve]  # after each step: the next step's lr
    peak = steps.index(max(steps))
    assert max(steps) == pytest.approx(0.5, rel=1e-3) and 0 < peak < len(steps) - 1  # up, then down
    assert steps[-1] < 0.001
    payload = newest_payload(path)
    assert payload["scheduler"]["last_epoch"] == 75 and payload["scheduler"]["total_steps"] == 80
    assert payload["definition"]["scheduler"] == "torch.optim.lr_scheduler.OneCycleLR"


@pytest.mark.slow
def test_one_cycle_on_two_processes_and_killed_mid_epoch_resumes_bitwise(one_cycle_runs, tmp_path):
    one = one_cycle_runs / "path"
    two = run_torchrun(2, "train", XOR, f"run.dir={tmp_path / 'two'}", *ARGS, *BY_PATH)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_bitwise(newest_weights(one), newest_weights(tmp_path / "two"))
    assert figures(tmp_path / "two") == figures(one) and lr_rows(tmp_path / "two") == lr_rows(one)
    # The user's script with fit(scheduler=...): rank 1 dies after step 50 (epoch 2, step 10 of 20); torchrun
    # restarts both, which resume from the checkpoint of step 45.
    killed = run_torchrun(
        2,
        SCRIPT,
        XOR,
        f"run.dir={tmp_path / 'killed'}",
        *ARGS,
        extra=("--max-restarts=1",),
        env=clean_env(KILL_RANK="1", KILL_STEP="50"),
        script="tests/helpers/kill_at_step.py",
    )
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "(exitcode: -9)" in killed.stderr and "resumed from" in killed.stdout + killed.stderr
    assert_bitwise(newest_weights(one), newest_weights(tmp_path / "killed"))
    assert lr_rows(tmp_path / "killed") == lr_rows(one) and figures(tmp_path / "killed") == figures(one)


def xor_tensors(n, seed):
    g = torch.Generator().manual_seed(seed)
    corners = torch.randint(0, 2, (n, 2), generator=g).float()
    return corners + 0.1 * torch.randn(n, 2, generator=g), (corners.sum(dim=1) == 1).long()


def plateau_cfg(tmp_path, *overrides):
    return distrain.load_config(
        {
            "seed": 0,
            "run": {"dir": str(tmp_path)},
            "data": {"global_batch_size": 64, "val_fraction": 0.25},
            "trainer": {"epochs": 10},
            "log": {"plots": False, "loggers": ["csv"], "every_steps": 5},
            "wandb": {"mode": "disabled"},
        },
        list(overrides),
    )


def test_reduce_on_plateau_halves_each_groups_lr_after_an_epoch_without_improvement(tmp_path):
    x, y = xor_tensors(512, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))

    def optimizer(params):  # two groups: the first layer at lr 3, the last at 1
        return torch.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 1.0}], lr=3.0)

    def plateau(opt):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.2)

    cfg = plateau_cfg(tmp_path, "schedule.interval=epoch", "schedule.monitor=val_loss")
    distrain.fit(cfg, model=model, train_data=TensorDataset(x, y), optimizer=optimizer, scheduler=plateau)
    val = [r["loss"] for r in records(tmp_path, "val")]
    train = records(tmp_path, "train")
    # ReduceLROnPlateau's rule (mode min; an improvement: 20% below the best; patience 0), replayed on the
    # logged curve.
    best, lr, expected = float("inf"), [3.0, 1.0], []
    for value in val:
        expected.append(list(lr))  # the lr an epoch starts with
        if value < best * (1 - 0.2):
            best = value
        else:
            lr = [v * 0.5 for v in lr]
    assert [[r["lr"], r["lr/group1"]] for r in train] == expected
    assert expected[-1][0] < 3.0, f"never plateaued: {val}"  # the test exercises a reduction
    with open(tmp_path / "scalars.csv", newline="") as f:
        assert "lr/group1" in next(csv.reader(f))
    assert newest_payload(tmp_path)["scheduler"]["best"] == best  # its state is checkpointed


@pytest.mark.parametrize(
    "overrides, given, key",
    [
        (["schedule.name=reduce_on_plateau", "schedule.interval=epoch"], None, "schedule.monitor"),
        (["schedule.name=reduce_on_plateau", "schedule.monitor=train_loss"], None, "schedule.interval"),
        (
            ["schedule.name=one_cycle", "schedule.args.max_lr=0.1", "schedule.monitor=train_loss"],
            None,
            "schedule.monitor",
        ),
        (["schedule.name=cosine"], lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.9), "scheduler"),
        ([], lambda opt: "not a scheduler", "scheduler"),
        (
            [],
            lambda opt: torch.optim.lr_scheduler.ExponentialLR(torch.optim.SGD([nn.Parameter(torch.ones(1))]), 0.9),
            "scheduler",
        ),
    ],
)
def test_a_scheduler_that_cannot_run_is_refused_by_name(tmp_path, overrides, given, key):
    x, y = xor_tensors(128, 1)
    cfg = plateau_cfg(tmp_path, "optim.lr=0.1", *overrides)
    with pytest.raises((ConfigError, ArgumentError)) as err:
        distrain.fit(cfg, model=nn.Linear(2, 2), train_data=TensorDataset(x, y), scheduler=given)
    assert err.value.key == key


@pytest.mark.parametrize(
    "override, key",
    [
        ("schedule.name=one_cyle", "schedule.name"),
        ("schedule.args.max_lr=0.1", "schedule.args"),
        ("schedule.monitor=test_loss", "schedule.monitor"),
    ],
)
def test_schedule_keys_are_checked_with_the_config(override, key):
    with pytest.raises(ConfigError) as err:
        distrain.load_config(XOR, [override])
    assert err.value.key == key
