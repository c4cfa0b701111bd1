"""End to end: the real CLI in one process and under the real torchrun with 2 gloo processes."""

import math

import pytest
import torch
import yaml
from helpers.runs import (
    REPO,
    XOR,
    last_record,
    newest_weights,
    printed_json,
    records,
    run_cli,
    run_torchrun,
    weights_at,
)

from distrain.checkpoint.store import find_resumable
from distrain.config.parse import from_dict, load_config
from distrain.data import build_splits, describe_data
from distrain.loop.components import build_model


def xor_model(cfg, weights=None):
    """The config's model and data splits, built here as the run built them; with `weights` loaded."""
    data = build_splits(cfg.data, cfg.seed)
    model = build_model(cfg, describe_data(data, None))
    if weights is not None:
        model.load_state_dict(weights)
    return model, data


def figures(model, split):
    """(loss, accuracy) of the one-logit XOR model on a split, computed here another way than distrain does:
    plain torch in one pass over the whole split, the mean of the per-sample BCE losses in float64."""
    x, y = split.tensors
    with torch.no_grad():
        logits = model(x).squeeze(-1)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
    return losses.double().mean().item(), ((logits > 0).long() == y).sum().item() / len(y)


@pytest.fixture(scope="module")
def xor_runs(tmp_path_factory):
    """configs/xor.yaml as shipped (100 epochs): one process, 2 torchrun processes, and 2 processes
    through the DataLoader path instead of the in-memory tensor path."""
    root = tmp_path_factory.mktemp("xor")
    one = run_cli("train", XOR, f"run.dir={root / 'one'}")
    assert one.returncode == 0, one.stderr
    two = run_torchrun(2, "train", XOR, f"run.dir={root / 'two'}", "checkpoint.keep_last=0")
    assert two.returncode == 0, two.stderr
    # 20 epochs are enough to show the two paths identical (compared with `two` at epoch 20).
    two_dl = run_torchrun(2, "train", XOR, f"run.dir={root / 'two_dl'}", "data.loader=dataloader", "trainer.epochs=20")
    assert two_dl.returncode == 0, two_dl.stderr
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", ["one", "two"])
def test_xor_reaches_full_test_accuracy(xor_runs, name):
    last_test = last_record(xor_runs / name, "test")
    assert last_test["epoch"] == 99 and last_test["accuracy"] == 1.0 and last_test["samples"] == 500


@pytest.mark.slow
def test_one_and_two_processes_end_with_the_same_weights(xor_runs):
    one, two = newest_weights(xor_runs / "one"), newest_weights(xor_runs / "two")
    assert list(one) == ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]  # unwrapped
    # Same global batches and the same averaged gradient; the only difference is float32 summation order
    # (two per-rank partial sums then an all-reduce, versus one sum), about one ulp (~1e-7) per step.
    # Measured after 2000 steps: 2.4e-7. A wrong shard, padding or local-mean weighting moves them > 1e-3.
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_tensor_path_and_dataloader_path_are_bitwise_identical(xor_runs):
    two = weights_at(xor_runs / "two" / "checkpoints" / "step-00000400.pt")  # epoch 20
    two_dl = newest_weights(xor_runs / "two_dl")
    for key in two:
        assert torch.equal(two[key], two_dl[key]), key


def test_tensor_and_dataloader_paths_identical_in_one_process(tmp_path):
    from distrain.loop.trainer import train

    for loader in ("tensor", "dataloader"):
        cfg = load_config(
            XOR,
            [
                f"run.dir={tmp_path / loader}",
                f"data.loader={loader}",
                "trainer.epochs=3",
                "data.args.num_train=301",
                "optim.args.momentum=0.9",
            ],
        )
        train(cfg, environ={})
    a, b = newest_weights(tmp_path / "tensor"), newest_weights(tmp_path / "dataloader")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_run_directory_holds_config_and_metrics(xor_runs):
    run = xor_runs / "two"
    cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert cfg.run.dir == str(run) and cfg.data.global_batch_size == 128
    found = records(run)
    assert [(r["epoch"], r["split"]) for r in found] == [(e, s) for e in range(100) for s in ("train", "test")]
    assert all(r["samples"] == (2500 if r["split"] == "train" else 500) for r in found)
    # Per-sample BCE losses are positive and finite (a sum of nothing, a NaN or a sign error is not), and
    # training lowered them.
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and 0 <= r["accuracy"] <= 1 for r in found)
    train = [r["loss"] for r in found if r["split"] == "train"]
    assert train[-1] < train[0] / 2, train
    # The last test figures are those of the final weights on the whole test set, computed here in one pass.
    model, data = xor_model(cfg, newest_weights(run))
    loss, accuracy = figures(model, data.test)
    assert found[-1]["accuracy"] == accuracy and found[-1]["loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.slow
def test_odd_test_set_metrics_are_exact_on_two_ranks(tmp_path):
    overrides = [f"run.dir={tmp_path}", "data.args.num_test=501", "data.eval_batch_size=64", "trainer.epochs=2"]
    assert run_cli("train", XOR, *overrides).returncode == 0
    ckpt = str(find_resumable(tmp_path))
    one = run_cli("eval", XOR, *overrides, f"checkpoint={ckpt}")
    assert one.returncode == 0, one.stderr
    m1 = printed_json(one)
    assert m1["test_samples"] == 501
    # The same figures on 2 ranks (501 samples do not split evenly over them). Evaluation has
    # no per-rank batch to split, so a global batch that does not divide (127) is no obstacle either.
    two = run_torchrun(2, "eval", XOR, *overrides, "data.global_batch_size=127", f"checkpoint={ckpt}")
    assert two.returncode == 0, two.stderr[-2000:]
    assert printed_json(two) == m1
    # ...and they are the true figures, recomputed here in one pass over the whole test set.
    model, data = xor_model(load_config(XOR, overrides), weights_at(ckpt))
    loss, accuracy = figures(model, data.test)
    assert len(data.test) == 501 and m1["test_accuracy"] == accuracy
    assert m1["test_loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.slow
def test_train_metrics_are_the_true_per_sample_figures_on_two_ranks(tmp_path):
    # lr 1e-30 moves no float32 weight, so every step sees the initial model and each epoch's train loss and
    # accuracy must be those of that model over the whole training set. 301 samples in global batches of
    # 64 end with a batch of 45 that splits 23/22 over the ranks, each share in 2 micro-batches: a sample
    # counted twice or dropped, or a loss weighted by the local instead of the per-sample mean, shows.
    overrides = [
        f"run.dir={tmp_path}",
        "data.args.num_train=301",
        "data.global_batch_size=64",
        "trainer.epochs=2",
        "trainer.accumulate_steps=2",
        "optim.lr=1e-30",
        "checkpoint.every_epochs=1",
    ]
    result = run_torchrun(2, "train", XOR, *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    cfg = load_config(XOR, overrides)
    model, data = xor_model(cfg, newest_weights(tmp_path))
    torch.manual_seed(cfg.seed)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), build_model(cfg, describe_data(data, None)).state_dict().values())
    )
    loss, accuracy = figures(model, data.train)
    train = records(tmp_path, "train")
    assert [r["samples"] for r in train] == [301, 301]
    for record in train:
        assert record["accuracy"] == accuracy
        assert record["loss"] == pytest.approx(loss, rel=1e-6)


def test_tabular_configs_train(tmp_path):
    result = run_cli("train", str(REPO / "configs" / "breast_cancer.yaml"), f"run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    last_test = last_record(tmp_path, "test")
    assert last_test["samples"] == 114 and last_test["accuracy"] >= 0.95


def test_xor_linear_cannot_learn_xor(tmp_path):
    assert (
        run_cli(
            "train", str(REPO / "configs" / "xor_linear.yaml"), f"run.dir={tmp_path}", "trainer.epochs=30"
        ).returncode
        == 0
    )
    last_test = last_record(tmp_path, "test")
    assert last_test["accuracy"] < 0.8
