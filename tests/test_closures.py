"""Closure optimizers and the rough edges a porting user meets first: L-BFGS through fit(optimizer=) and
through step= (examples/lbfgs.py), on 1 and 2 processes and 20 times over on 2 without a hang; a global
batch the world size does not divide (97 on 2); the several-models probe calling closures and saying it
probes; dict samples keeping their keys with step=; optim keys that fit(optimizer=) would ignore."""

import pytest
import torch
from helpers.runs import PYTHON, REPO, clean_env, records, run_group, run_torchrun
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import distrain
from distrain.errors import ConfigError
from distrain.loop.steps import needs_closure

LBFGS = [str(REPO / "examples" / "lbfgs.py"), str(REPO / "examples" / "lbfgs.yaml")]
ARGS = ("trainer.epochs=2", "checkpoint.every_epochs=0", "log.plots=false")
REPEAT = "tests/helpers/repeat_fit.py"


def cfg(tmp_path, *more):
    raw = {
        "seed": 0,
        "run": {"dir": str(tmp_path)},
        "data": {"global_batch_size": 8},
        "trainer": {"epochs": 1},
        "log": {"plots": False},
        "wandb": {"mode": "disabled"},
    }
    return distrain.load_config(raw, list(more))


def test_a_closure_optimizer_is_told_by_its_step_signature():
    params = [nn.Parameter(torch.zeros(1))]
    assert needs_closure(torch.optim.LBFGS(params))
    assert not needs_closure(torch.optim.SGD(params, lr=0.1)) and not needs_closure(torch.optim.Adam(params))


@pytest.fixture(scope="module")
def lbfgs_runs(tmp_path_factory):
    """examples/lbfgs.py run by tests/helpers/repeat_fit.py: seeds 0..1 in one process, and seeds 0..19
    under torchrun x2 (20 whole runs in one launch); even seeds fit(optimizer=LBFGS), odd ones step=."""
    root = tmp_path_factory.mktemp("lbfgs")
    one = run_group(
        [PYTHON, REPEAT, *LBFGS, *ARGS],
        env=clean_env(REPEAT="2", RUN_ROOT=str(root / "one"), ALTERNATE="--step"),
        timeout=240,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    # Bounded: a rank that took another path through L-BFGS's line search would hang here.
    two = run_torchrun(
        2,
        *LBFGS,
        *ARGS,
        script=REPEAT,
        env=clean_env(REPEAT="20", RUN_ROOT=str(root / "two"), ALTERNATE="--step"),
        timeout=240,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    return root


@pytest.mark.slow
def test_lbfgs_agrees_on_1_and_2_processes_through_fit_and_step(lbfgs_runs):
    for seed in ("0", "1"):  # fit(optimizer=LBFGS) with loss=; then step=
        a = torch.load(lbfgs_runs / "one" / seed / "model.pt")
        b = torch.load(lbfgs_runs / "two" / seed / "model.pt")
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a), (seed, a, b)
        test_a, test_b = records(lbfgs_runs / "one" / seed, "test")[-1], records(lbfgs_runs / "two" / seed, "test")[-1]
        assert test_a["loss"] == pytest.approx(test_b["loss"], rel=1e-4) and test_a["loss"] < 0.01


@pytest.mark.slow
def test_lbfgs_20_runs_on_2_processes_end_and_read_the_odd_global_batch_whole(lbfgs_runs):
    for seed in range(20):
        train = records(lbfgs_runs / "two" / str(seed), "train")
        # 97 samples in one global batch on 2 ranks (49 + 48): each read once per epoch, the loss their mean.
        assert [r["samples"] for r in train] == [97, 97]
        assert (lbfgs_runs / "two" / str(seed) / "model.pt").exists()


def test_closure_optimizers_refuse_what_cannot_run_them(tmp_path):
    model = nn.Linear(2, 1)
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    for override, key in (("trainer.on_nonfinite=skip_step", "trainer.on_nonfinite"), ("strategy=diloco", "strategy")):
        with pytest.raises(ConfigError) as info:
            distrain.fit(
                cfg(tmp_path / key, override),
                model=model,
                optimizer=torch.optim.LBFGS(model.parameters()),
                train_data=data,
                loss=nn.MSELoss(),
            )
        assert info.value.key == key and "LBFGS" in str(info.value)


def test_optim_keys_that_a_given_optimizer_replaces_are_refused_and_clipping_is_kept(tmp_path):
    model = nn.Linear(2, 1)
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    with pytest.raises(ConfigError) as info:
        distrain.fit(
            cfg(tmp_path / "a", "optim.lr=99"),
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            train_data=data,
            loss=nn.MSELoss(),
        )
    assert info.value.key == "optim.lr" and "fit(optimizer=...)" in str(info.value)
    # optim: {clip_grad_norm: ...} alone needs no optim.lr, and the clipping applies: one SGD step of lr 1
    # moves the weights by exactly the clipped gradient's norm.
    before = [p.detach().clone() for p in model.parameters()]
    distrain.fit(
        cfg(tmp_path / "b", "optim={clip_grad_norm: 0.001}", "data.shuffle=false", "data.global_batch_size=16"),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        train_data=data,
        loss=nn.MSELoss(),
    )
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert moved == pytest.approx(0.001, rel=1e-4)


class Rows(Dataset):
    def __init__(self, n=8):
        self.x, self.y = torch.randn(n, 2), torch.randn(n, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"id": torch.tensor(i), "x": self.x[i], "y": self.y[i]}


def test_a_step_gets_dict_samples_with_their_own_keys_in_their_order(tmp_path):
    seen, probed = [], []

    def step(model, batch):
        seen.append(list(batch))
        probed.append(distrain.probing())
        return ((model(batch["x"]) - batch["y"]) ** 2).mean(dim=1)

    distrain.fit(cfg(tmp_path, "optim.lr=0.1"), model=nn.Linear(2, 1), train_data=Rows(), step=step)
    assert seen and all(keys == ["id", "x", "y"] for keys in seen)
    assert probed[0] and not any(probed[1:])  # the probe says it probes; training does not


def test_the_several_models_probe_calls_closures_and_says_it_probes(tmp_path):
    calls = []

    def step(models, batch, optimizers):
        x, y = batch

        def closure():
            optimizers["m"].zero_grad()
            loss = ((models["m"](x) - y) ** 2).mean()
            loss.backward()
            return loss

        loss = optimizers["m"].step(closure)  # LBFGS returns the closure's first loss
        calls.append(distrain.probing())
        return loss.detach()

    model = nn.Linear(2, 1)
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    result = distrain.fit(
        cfg(tmp_path),
        model={"m": model},
        optimizer={"m": lambda params: torch.optim.LBFGS(params, max_iter=5)},
        train_data=data,
        step=step,
    )
    assert calls == [True, False, False] and result["train_loss"] > 0  # the probe, then 2 steps
