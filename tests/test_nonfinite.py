"""Non-finite values (trainer.on_nonfinite): a diverging run stops on every rank with a message and never
saves non-finite weights; skip_step skips exactly the steps whose gradients are NaN/Inf, on every rank."""

from __future__ import annotations

import os

import pytest
import torch
from helpers.runs import XOR, newest_payload, records, run_cli, run_torchrun, spawn
from torch import nn
from torch.utils.data import TensorDataset

import distrain
from distrain.checkpoint.store import find_resumable, load_payload

DIVERGE = [
    "data.name=diabetes",
    "data.args={}",
    "optim.lr=10",
    "trainer.epochs=6",
    "checkpoint.every_steps=1",
    "checkpoint.keep_last=3",
    "wandb.mode=disabled",
    "log.plots=false",
]


@pytest.mark.slow  # end to end (several trainings or processes)
def test_a_diverging_run_stops_with_the_last_good_checkpoint_newest(tmp_path):
    r = run_cli("train", XOR, f"run.dir={tmp_path}", *DIVERGE)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    message = next(line for line in err if line.startswith("distrain: error: training diverged"))
    step = int(message.split("global step ")[1].split()[0])
    newest = find_resumable(tmp_path)
    # Every step saves after checking: the newest checkpoint is the step before the first bad loss.
    assert newest is not None and newest.name == f"step-{step - 1:08d}.pt"
    assert str(newest) in message
    payload = load_payload(newest)
    assert all(torch.isfinite(t).all() for t in payload["model"].values())
    # Nothing after it: the last logged epoch is before the divergence, no loss of inf or nan is recorded.
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records(tmp_path))


class Poison(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `factor` (NaN: a non-finite gradient)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class PoisonedMLP(nn.Module):
    """On the listed training calls (= optimizer steps, 1-based) of the listed ranks, the gradient becomes
    `factor` times itself."""

    def __init__(self, steps, factor, ranks=(0,), rank=0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.steps, self.factor, self.poisoned, self.calls = set(steps), factor, rank in ranks, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.poisoned and self.calls in self.steps:
                return Poison.apply(out, self.factor)
        return out


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(256, 1, generator=g)
    return TensorDataset(x[:192], y[:192]), TensorDataset(x[192:], y[192:])


STEPS = (2, 5, 23)  # 6 steps per epoch (192 / 32): steps 2 and 5 in epoch 0, 23 in epoch 3 (the last)


def _fit(run_dir, model, environ, mode):
    cfg = distrain.load_config(
        {
            "seed": 0,
            "run": {"dir": str(run_dir)},
            "data": {"global_batch_size": 32},
            "loss": {"name": "mse"},
            "optim": {"name": "sgd", "lr": 0.05},
            "trainer": {"epochs": 4, "on_nonfinite": mode},
            "log": {"plots": False},
            "wandb": {"mode": "disabled"},
        }
    )
    train, test = _data()
    os.environ.update(environ)  # a spawned rank's launcher variables (the fixture restores the environment)
    result = distrain.fit(cfg, model=model, train_data=train, test_data=test)
    return result, {k: v.clone() for k, v in model.net.state_dict().items()}


def _skip_vs_zero(rank, world, port, out):
    environ = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    # NaN on the last rank only: the averaged gradient is NaN everywhere and every rank skips.
    result, weights = _fit(
        out / "nan", PoisonedMLP(STEPS, float("nan"), ranks=(world - 1,), rank=rank), environ, "skip_step"
    )
    torch.save({"result": result.as_dict(), "weights": weights}, out / f"rank{rank}.pt")


def _check_skips(result, weights, reference_weights, run_dir):
    assert result["skipped_steps"] == len(STEPS)
    assert all(torch.isfinite(w).all() for w in weights.values())
    # With plain SGD a zero gradient leaves the weights exactly as they were: the same as a skipped step.
    assert all(torch.equal(weights[k], reference_weights[k]) for k in weights)
    # The skipped step's samples are not in the last epoch's train figures (one batch of 32 in epoch 3).
    assert result["train_samples"] == 192 - 32
    assert [r["skipped_steps"] for r in records(run_dir, "train")] == [2, 2, 2, 3]
    assert newest_payload(run_dir)["skipped_steps"] == 3


def test_skip_step_skips_exactly_the_poisoned_steps_in_one_process(tmp_path):
    # The reference: the same steps get a zero gradient instead of NaN, with the non-finite check on.
    _, reference = _fit(tmp_path / "zero", PoisonedMLP(STEPS, 0.0), {}, "stop")
    result, weights = _fit(tmp_path / "nan", PoisonedMLP(STEPS, float("nan")), {}, "skip_step")
    _check_skips(result, weights, reference, tmp_path / "nan")
    # Without skip_step the same run stops at the first poisoned step.
    with pytest.raises(
        distrain.errors.Diverged, match="training diverged: the train loss became NaN or Inf at global step 3 "
    ):
        _fit(tmp_path / "stop", PoisonedMLP(STEPS, float("nan")), {}, "stop")


@pytest.mark.slow  # end to end (several trainings or processes)
def test_skip_step_agrees_over_two_processes(tmp_path):
    _, reference = _fit(tmp_path / "zero", PoisonedMLP(STEPS, 0.0), {}, "stop")  # one process, zero grads
    spawn(_skip_vs_zero, 2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for saved in ranks:
        # Results equal across world sizes to rounding; per-rank equal bitwise.
        assert saved["result"]["skipped_steps"] == len(STEPS)
        assert all(torch.allclose(saved["weights"][k], reference[k], atol=1e-6) for k in reference)
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in reference)
    assert ranks[0]["result"]["train_samples"] == 192 - 32


@pytest.mark.slow
def test_under_torchrun_errors_are_printed_once(tmp_path):
    # A divergence on 2 ranks: one message, and torchrun's failure summary names it too (its error file).
    r = run_torchrun(2, "train", XOR, f"run.dir={tmp_path / 'div'}", *DIVERGE)
    assert r.returncode != 0
    lines = (r.stdout + r.stderr).splitlines()
    mine = [line for line in lines if line.startswith(("distrain: error: training diverged", "[rank"))]
    assert len(mine) == 1 and "the newest good checkpoint" in mine[0], r.stderr
    assert "Traceback" not in r.stderr.split("distrain: error:")[0]  # no worker traceback before it
    summary = r.stderr.split("Root Cause")[1]
    assert "traceback : distrain: error: training diverged" in summary, r.stderr
    # The first rank to exit did so with status 3 (the agent then stops the other one, which may show -15).
    assert "exitcode  : 3" in r.stderr.split(" FAILED")[-1], r.stderr
    # A config error met by every rank is printed once too: test_config.test_global_batch_must_divide_over_ranks.


def test_all_finite_sees_every_nan_and_inf_in_every_floating_dtype():
    # Each tensor's min and max (no bool written per element): a NaN anywhere, +Inf or -Inf, in any
    # floating dtype and position; empty, integer and 0-dim tensors; complex ones the plain way.
    from distrain.loop.nonfinite import all_finite

    assert all_finite([]) and all_finite([torch.zeros(0), torch.arange(5), torch.tensor(1.5)])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for bad in (float("nan"), float("inf"), float("-inf")):
            for where in (0, 4097, -1):
                x = torch.randn(10_000).to(dtype)
                assert all_finite([torch.ones(3), x])
                x[where] = bad
                assert not all_finite([torch.ones(3), x]), (dtype, bad, where)
    assert not all_finite([torch.tensor(float("nan"))])
    assert all_finite([torch.randn(4, dtype=torch.complex64)])
    assert not all_finite([torch.tensor([1 + 1j, complex(float("inf"), 0)])])
