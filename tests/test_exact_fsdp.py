"""strategy fsdp in exact mode (strategies/exact_fsdp.py): exact mode's chunks and sum over a model
sharded by FSDP2, bitwise as exact ddp.

In one process: where each rank's rows of a whole gradient lie (against FSDP2's own sharding, as ranks of
2, 3 and 4 on a fake process group), the step over a model sharded on a mesh of one against exact ddp's
(BatchNorm, dropout, clipping, an uneven last batch with empty chunks), and the config's rules. Then the
real run: a dropout MLP sharded over 2 processes under torchrun against exact ddp in one process, and its
sharded checkpoint resumed on 2 processes and in one.
"""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
import torch.distributed as tdist
from helpers.runs import (
    REPO,
    XOR,
    assert_bitwise,
    clean_env,
    newest_weights,
    records,
    run_cli,
    run_torchrun,
    weights_at,
)
from torch import nn

from distrain.config.parse import load_config
from distrain.data import Batch
from distrain.errors import ConfigError
from distrain.launch.dist import DistContext
from distrain.launch.env import detect
from distrain.loop.objective import Objective
from distrain.strategies import build_strategy
from distrain.strategies.exact import ExactStrategy
from distrain.strategies.exact_fsdp import ExactFSDPStrategy, shard_of, shard_rows

ONE = DistContext(detect({}), torch.device("cpu"), None)
GROUP_OF_ONE = DistContext(detect({}), torch.device("cpu"), "gloo")  # a launcher's world of 1: sharded
EXACT = ["trainer.exact=true", "trainer.exact_chunk=4", "data.global_batch_size=16", "optim.clip_grad_norm=0.05"]


@pytest.fixture
def threads():
    """Exact mode fixes the intra-op thread count: put back after the test."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


# ------------------------------------------------------------------------------------ the shards


@pytest.mark.parametrize("world", [2, 3, 4])
def test_each_ranks_rows_of_the_whole_gradient_are_fsdp2s_shard(world):
    """FSDP2 shards each parameter on a fake process group as rank r of `world` (one process, no data
    moves): shard_of cuts the same rows (dim 0 of 5, 1 and 8 rows: uneven, empty, even)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    for rank in range(world):
        tdist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        try:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 1), nn.Linear(1, 8))
            whole = {name: p.detach().clone() for name, p in model.named_parameters()}
            fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
            for name, param in model.named_parameters():
                grad = shard_of(whole[name], param)
                assert grad.placements == param.placements and grad.shape == param.shape
                assert torch.equal(grad.to_local(), param.to_local()), (name, rank)
                start, rows = shard_rows(whole[name].shape[0], world, rank)
                assert torch.equal(grad.to_local(), whole[name][start : start + rows])
        finally:
            tdist.destroy_process_group()


# ------------------------------------------------------------------------------------ the step


def _steps(strategy, model, sizes, clip):
    """Steps of SGD with momentum on seeded random regression batches of `sizes` samples: (the model's
    state as whole tensors, the step losses)."""
    objective = Objective(loss_fn=nn.MSELoss(reduction="none"), name="mse", kind="regression")
    model = strategy.setup(model)
    train_model, optimizer = strategy.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    gen, losses = torch.Generator().manual_seed(1), []
    for step, n in enumerate(sizes):
        x, y = torch.randn(n, 3, generator=gen), torch.randn(n, 2, generator=gen)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        grads = strategy.gradients(train_model, Batch(step, x, y, n), objective, step)
        strategy.step(optimizer, train_model, clip)
        losses.append(grads.loss.item())
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    return {k: v.detach().clone() for k, v in full.items()}, losses


@pytest.mark.parametrize("batchnorm", [True, False])
def test_a_model_sharded_on_a_mesh_of_one_steps_bitwise_as_exact_ddp(threads, batchnorm):
    """A gloo group of one (torchrun --nproc_per_node=1): fully_shard'ed units, gradient sync off, each
    chunk's whole gradient taken off the gathered parameters, clipped on the whole sum; against
    ExactStrategy on a plain copy. With BatchNorm (replayed running statistics) and dropout, batches of
    16 then 9 (chunks of 3, 2, 2, 2); without BatchNorm, a last batch of 2 (two empty chunks, run too)."""
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(7)] if batchnorm else []
    model = nn.Sequential(
        nn.Linear(3, 7), *norm, nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2)
    )
    twin, spare = copy.deepcopy(model), copy.deepcopy(model)
    sizes = [16, 16, 16, 9 if batchnorm else 2]
    cfg = load_config(XOR, ["strategy=fsdp", "fsdp.units=[Linear]", *EXACT])
    want = _steps(ExactStrategy(load_config(XOR, EXACT), ONE), model, sizes, cfg.optim)
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        strategy = ExactFSDPStrategy(cfg, GROUP_OF_ONE)
        got = _steps(strategy, twin, sizes, cfg.optim)
        assert strategy.sharded and type(twin).__name__ == "FSDPSequential"
    finally:
        tdist.destroy_process_group()
    assert_bitwise(want[0], got[0])
    assert want[1] == got[1]
    if batchnorm:
        assert int(got[0]["1.num_batches_tracked"]) == 4 * 4  # one update per chunk
    unclipped = _steps(ExactStrategy(load_config(XOR, EXACT[:-1]), ONE), spare, sizes, None)
    assert unclipped[1][1:] != want[1][1:]  # optim.clip_grad_norm did clip


# ------------------------------------------------------------------------------------ the config


def test_fsdp_in_exact_mode_is_its_own_strategy_and_refuses_what_the_world_size_would_change(threads):
    strategy = build_strategy(load_config(XOR, ["strategy=fsdp", "trainer.exact=true"]), ONE)
    assert type(strategy) is ExactFSDPStrategy
    assert strategy.checkpoint_format == "sharded" and strategy.pads_evaluation and strategy.replaces_parameters
    assert strategy.figure_units == 2.0**24 and strategy.key == "trainer.exact"
    for overrides, key in (
        (["fsdp.param_dtype=bfloat16"], "fsdp.param_dtype"),
        (["fsdp.cpu_offload=true"], "fsdp.cpu_offload"),
        (["trainer.precision=fp16"], "trainer.precision"),  # fsdp's own refusal, in any mode
    ):
        with pytest.raises(ConfigError) as err:
            load_config(XOR, ["strategy=fsdp", "trainer.exact=true", *overrides])
        assert err.value.key == key
    with pytest.raises(ConfigError, match="strategy=diloco") as err:
        load_config(XOR, ["strategy=diloco", "trainer.exact=true"])
    assert err.value.key == "trainer.exact"
    checkpointed = build_strategy(
        load_config(XOR, ["strategy=fsdp", "trainer.exact=true", "fsdp.activation_checkpointing=true"]), ONE
    )
    with pytest.raises(ConfigError, match="replays one running-statistics update") as err:
        checkpointed.setup(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)))
    assert err.value.key == "fsdp.activation_checkpointing"


# ------------------------------------------------------------------------------------ the real run

ARGS = (
    "model.name=helpers.dropout_probe:DropoutNet",  # Linear, tanh, dropout 0.5, Linear: seeded masks
    "model.args={}",
    "fsdp.units=[Linear]",  # two units and the root: gathered and freed in every chunk
    "data.args.num_train=2443",  # the last batch of each epoch: 11 samples in 16 chunks, 6 and 5 a rank
    "optim.name=sgd",
    "optim.lr=0.1",
    "optim.args={momentum: 0.9}",
    "optim.clip_grad_norm=0.5",
    "trainer.exact=true",
    "trainer.epochs=2",
    "checkpoint.every_epochs=1",
    "checkpoint.keep_last=0",
    "log.plots=false",
)
HALF = "step-00000020"  # 20 steps an epoch: the checkpoint of epoch 1


def _figures(run_dir):
    """Every metric figure of metrics.jsonl (not the timings), in order."""
    timing = {"time_s", "train_time_s", "samples_per_s", "timestamp", "step_time_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records(run_dir)]


@pytest.mark.slow
def test_fsdp_on_2_processes_in_exact_mode_is_bitwise_exact_ddp_on_1_and_its_checkpoint_resumes(tmp_path):
    """fsdp x2 (torchrun) against exact ddp in one process: the final weights, the epoch-1 checkpoint (a
    sharded folder against a .pt) and every metrics.jsonl figure bitwise; then the sharded epoch-1
    checkpoint resumed on 2 processes and in one ends bitwise as exact ddp too."""
    env = clean_env(PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    env["PROBE_DIR"] = str(tmp_path)  # where DropoutNet leaves its first masks
    ddp = tmp_path / "ddp1"
    one = run_cli("train", XOR, f"run.dir={ddp}", *ARGS, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    fsdp = tmp_path / "fsdp2"
    two = run_torchrun(2, "train", XOR, f"run.dir={fsdp}", *ARGS, "strategy=fsdp", env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    folder = fsdp / "checkpoints" / HALF  # sharded: each rank wrote its own shards
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    assert_bitwise(newest_weights(ddp), newest_weights(fsdp))
    assert_bitwise(weights_at(ddp / "checkpoints" / f"{HALF}.pt"), weights_at(folder))
    assert len(records(ddp)) == 4 and _figures(fsdp) == _figures(ddp)  # train and test, 2 epochs
    # The sharded epoch-1 checkpoint resumed on 2 processes (into the shards) and in one (a plain module):
    # each ends epoch 2 as exact ddp did.
    for nproc in (2, 1):
        resumed = tmp_path / f"resumed{nproc}"
        (resumed / "checkpoints").mkdir(parents=True)
        for item in (fsdp / "checkpoints").glob(f"{HALF}*"):  # the folder and its manifest
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, resumed / "checkpoints" / item.name)
        args = ("train", XOR, f"run.dir={resumed}", *ARGS, "strategy=fsdp")
        again = run_torchrun(nproc, *args, env=env) if nproc > 1 else run_cli(*args, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"resumed from {resumed / 'checkpoints' / HALF}" in again.stdout, again.stdout[-2000:]
        assert_bitwise(newest_weights(ddp), newest_weights(resumed))
        assert _figures(resumed) == _figures(ddp)[2:]  # epoch 2's


@pytest.mark.slow
def test_the_shipped_example_trains_bitwise_alike_in_one_process_and_sharded_on_2(tmp_path):
    """examples/exact_fsdp.yaml as shipped (wine, an MLP, AdamW with clipping): in one process (a plain
    module) and sharded on 2 processes (torchrun), the same final weights and every metrics.jsonl figure."""
    example = str(REPO / "examples" / "exact_fsdp.yaml")
    one = run_cli("train", example, f"run.dir={tmp_path / 'one'}", env=clean_env())
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_torchrun(2, "train", example, f"run.dir={tmp_path / 'two'}", env=clean_env())
    assert two.returncode == 0, two.stderr[-3000:]
    shards = {p.name for p in (tmp_path / "two" / "checkpoints" / "step-00000090").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp"} <= shards  # sharded: each rank wrote its own
    assert_bitwise(newest_weights(tmp_path / "one"), newest_weights(tmp_path / "two"))
    assert len(records(tmp_path / "one")) == 20 and _figures(tmp_path / "two") == _figures(tmp_path / "one")
