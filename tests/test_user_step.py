"""Your own training step (fit(step=...)): pytorch/examples' VAE (examples/vae.py) on 2,000 real MNIST
images, bitwise alike on 1 and 2 processes in exact mode and within 2% of the original script's loop;
a step's batch mean, per-sample losses and dict on XOR; the loss weighting on an uneven split; errors."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers.runs import REPO, assert_bitwise, clean_env, newest_weights, records, run_torchrun
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distrain
from distrain.errors import ArgumentError
from distrain.loop.user_step import StepObjective

sys.path.insert(0, str(REPO / "examples"))
import vae  # noqa: E402  (examples/vae.py: VAE, loss_function, step)

EPOCHS = 3


@pytest.fixture(scope="module")
def data_root():
    sys.path.insert(0, str(REPO / "tests"))
    from fetch_data import default_root, fetch

    return str(fetch(default_root()))


def vae_cfg(run_dir, *more):
    return distrain.load_config(str(REPO / "examples" / "vae.yaml"), [f"run.dir={run_dir}", *more])


@pytest.fixture(scope="module")
def vae_one(tmp_path_factory, data_root):
    """examples/vae.py's run in this process, exact mode."""
    run = tmp_path_factory.mktemp("vae-1")
    train, test = vae.mnist(data_root)
    torch.manual_seed(1)
    result = distrain.fit(
        vae_cfg(run, "trainer.exact=true"), model=vae.VAE(), train_data=train, test_data=test, step=vae.step
    )
    return run, result


def original_loop(data_root, epochs=EPOCHS):
    """pytorch/examples' vae/main.py train and test loops (batch 128, Adam 1e-3) on the same images;
    returns the last epoch's test loss per sample, as it prints it."""
    train, test = vae.mnist(data_root)
    torch.manual_seed(1)
    model = vae.VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_loader = DataLoader(train, batch_size=128, shuffle=True)
    test_loader = DataLoader(test, batch_size=128, shuffle=False)
    for _ in range(epochs):
        model.train()
        for data, _ in train_loader:
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = vae.loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            optimizer.step()
        model.eval()
        test_loss = 0
        with torch.no_grad():
            for data, _ in test_loader:
                recon_batch, mu, logvar = model(data)
                test_loss += vae.loss_function(recon_batch, data, mu, logvar).item()
        test_loss /= len(test_loader.dataset)
    return test_loss


def test_vae_trains_to_the_original_scripts_test_loss(vae_one, data_root):
    _, result = vae_one
    original = original_loop(data_root)
    assert result.test["loss"] == pytest.approx(original, rel=0.02)
    assert result.train["loss"] < records(vae_one[0], "train")[0]["loss"]  # it learned
    assert result.samples == {"train": 2000, "test": 1000}


@pytest.mark.slow
def test_vae_on_two_processes_is_bitwise_the_one_process_run(vae_one, data_root, tmp_path):
    run, _ = vae_one
    two = run_torchrun(
        2,
        "vae.yaml",
        data_root,
        f"run.dir={tmp_path}",
        "trainer.exact=true",
        script="examples/vae.py",
        cwd=REPO / "examples",
        env=clean_env(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))),
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert_bitwise(newest_weights(run), newest_weights(tmp_path))
    one_train, two_train = records(run, "train"), records(tmp_path, "train")
    assert [r["loss"] for r in one_train] == [r["loss"] for r in two_train]
    # Evaluation draws the VAE's noise from each rank's own stream: the same figure up to that noise.
    for a, b in zip(records(run, "test"), records(tmp_path, "test")):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.01)
    assert '"step": "__main__.step"' in (tmp_path / "definition.json").read_text()  # the script's function


# ------------------------------------------------------------------------------------ XOR, in process


def xor(n, seed):
    g = torch.Generator().manual_seed(seed)
    corners = torch.randint(0, 2, (n, 2), generator=g).float()
    return TensorDataset(corners + 0.1 * torch.randn(n, 2, generator=g), (corners.sum(dim=1) == 1).float())


def xor_fit(run_dir, **kw):
    cfg = distrain.load_config(
        {
            "seed": 0,
            "run": {"dir": str(run_dir)},
            "data": {"global_batch_size": 100},  # 450 samples: an uneven last batch of 50
            "optim": {"name": "sgd", "lr": 0.5},
            "trainer": {"epochs": 3},
            "log": {"plots": False, "loggers": []},
            "wandb": {"mode": "disabled"},
        }
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    result = distrain.fit(cfg, model=model, train_data=xor(450, 1), test_data=xor(101, 2), **kw)
    return model, result


def test_a_mean_per_sample_or_dict_step_trains_as_the_built_in_step(tmp_path):
    built_in, r0 = xor_fit(tmp_path / "built_in", loss=nn.BCEWithLogitsLoss())

    def mean(model, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(model(x), y)

    def per_sample(model, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(model(x), y, reduction="none")

    def as_dict(model, batch):
        x, y = batch
        logits = model(x)
        return {
            "loss_sum": F.binary_cross_entropy_with_logits(logits, y, reduction="sum"),
            "accuracy": ((logits > 0).float() == y).float().mean(),
        }

    for name, step in (("mean", mean), ("per_sample", per_sample), ("dict", as_dict)):
        model, result = xor_fit(tmp_path / name, step=step)
        for a, b in zip(built_in.parameters(), model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        assert result.train["loss"] == pytest.approx(r0.train["loss"], rel=1e-5), name
        assert result.test["loss"] == pytest.approx(r0.test["loss"], rel=1e-5), name
    assert result.train["accuracy"] == pytest.approx(r0.train["accuracy"], abs=1e-6)  # batch means in float32
    assert records(tmp_path / "dict", "test")[-1]["accuracy"] == pytest.approx(r0.test["accuracy"], abs=1e-6)


def test_the_step_loss_keeps_the_global_mean_on_an_uneven_split():
    per_sample = torch.tensor([1.0, 2.0, 3.0])
    # This rank holds 3 of a global batch of 5 on 2 ranks: DDP averages the two ranks' losses, so each
    # rank's loss must be its sum * 2 / 5, whatever form the step returns it in.
    for form in (lambda x: x, lambda x: x.mean(), lambda x: {"loss_sum": x.sum()}, lambda x: {"loss": x.mean()}):
        objective = StepObjective(lambda model, batch, form=form: form(batch[0]), None)
        loss, (values, count) = objective.forward_loss(None, per_sample, torch.zeros(3), 2, 5)
        value, weight = values["loss"]
        assert loss.item() == pytest.approx(6.0 * 2 / 5) and count == 3 and (value * weight).item() == pytest.approx(6)
    # An even share: a batch mean is backpropagated as it is.
    objective = StepObjective(lambda model, batch: batch[0].mean(), None)
    assert objective.forward_loss(None, per_sample, torch.zeros(3), 2, 6)[0].item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kw, argument, words",
    [
        ({"step": lambda m, b: m[0](b[0])}, "step", "shape"),  # outputs, not a loss
        ({"step": lambda m, b: {"logits": m(b[0])}}, "step", "'loss'"),
        ({"step": lambda m, b: 1.0}, "step", "float"),
        ({"step": lambda m, b: m(b[0]).mean(), "loss": nn.MSELoss()}, "loss", "step="),
        ({"step": "train"}, "step", "not a function"),
    ],
)
def test_a_step_that_returns_no_loss_is_named(tmp_path, kw, argument, words):
    with pytest.raises(ArgumentError) as err:
        xor_fit(tmp_path, **kw)
    assert err.value.key == argument and words in str(err.value)
