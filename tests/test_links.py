"""Training over slow links: DDP's communication hooks (ddp.comm_hook) and the diloco strategy (DiLoCo and
local SGD). Units first (PowerSGD's state through a checkpoint, the outer step's arithmetic, the
refusals, the step log's comm figures), then real torchrun x2 runs: local SGD syncing every step is DDP,
each hook trains as DDP does, a SIGKILL resumes bitwise with PowerSGD and with DiLoCo (mid-round and at a
sync), and two network namespaces joined by a link shaped to 100 Mbit/s carry far fewer bytes for diloco
than for ddp (the interface counters). The full measurements are bench/links.py's."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch
from helpers.runs import REPO, TORCHRUN, XOR, assert_bitwise, clean_env, newest_payload, records, run_torchrun
from torch import nn

from distrain.config.parse import load_config
from distrain.errors import ConfigError
from distrain.launch.dist import DistContext
from distrain.launch.env import detect
from distrain.reporting.report import _comm_text
from distrain.strategies.comm import CommMeter, build_comm_hook
from distrain.strategies.diloco import DiLoCoStrategy

ONE = DistContext(detect({}), torch.device("cpu"), None)
# XOR with a 2-64-64-1 MLP: its 64x64 layer is one PowerSGD compresses (rank 1: 128 numbers, not 4,096).
MLP = ["model.name=mlp", "model.args={hidden_sizes: [64, 64], activation: relu}", "log.plots=false"]


# ------------------------------------------------------------------------------------ units


def test_powersgd_state_goes_through_a_checkpoint_as_plain_tensors_and_comes_back_whole():
    cfg = load_config(XOR, ["ddp.comm_hook=powersgd", "ddp.powersgd_rank=2"]).ddp
    hook = build_comm_hook(cfg, CommMeter())
    state = hook.state
    state.iter, state.error_dict = 17, {0: torch.randn(5)}
    state.p_memory_dict, state.q_memory_dict = {0: torch.randn(4, 2)}, {0: torch.randn(3, 2)}
    state.rng.randint(1_000)  # the generator moved on
    buffer = io.BytesIO()
    torch.save(hook.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # a checkpoint loads without pickle
    again = build_comm_hook(cfg, CommMeter())
    assert again.load_state_dict(saved)
    assert again.state.iter == 17 and again.state.matrix_approximation_rank == 2
    assert torch.equal(again.state.error_dict[0], state.error_dict[0])
    assert torch.equal(again.state.q_memory_dict[0], state.q_memory_dict[0])
    assert again.state.rng.randint(1_000_000) == state.rng.randint(1_000_000)  # the same stream from here
    assert not build_comm_hook(cfg, CommMeter()).load_state_dict(None)  # nothing to continue from: said
    assert build_comm_hook(load_config(XOR, ["ddp.comm_hook=fp16"]).ddp, CommMeter()).state_dict() == {}


class FakeBucket:
    """What CommHook._follow_layout reads of DDP's GradBucket: its index and its parameters, in order."""

    def __init__(self, params):
        self.params = params

    def index(self):
        return 0

    def parameters(self):
        return self.params


def test_powersgd_state_follows_its_parameters_when_a_bucket_is_laid_out_anew():
    # Two matrices PowerSGD compresses at rank 1 (8x8: P 8 + Q 8 numbers; 8x16: P 8 + Q 16) and a bias it
    # does not: the error feedback is per element of the bucket, P and Q per compressed matrix.
    hook = build_comm_hook(load_config(XOR, ["ddp.comm_hook=powersgd"]).ddp, CommMeter())
    square, wide, bias = torch.zeros(8, 8), torch.zeros(8, 16), torch.zeros(3)
    hook.param_index = {id(square): 0, id(wide): 1, id(bias): 2}
    error = [torch.arange(64.0), 100 + torch.arange(128.0), 300 + torch.arange(3.0)]
    p, q = [torch.arange(8.0), 10 + torch.arange(8.0)], [20 + torch.arange(8.0), 30 + torch.arange(16.0)]
    state = hook.state
    state.error_dict = {0: torch.cat(error)}  # written in the layout (0, 1, 2)
    state.p_memory_dict, state.q_memory_dict = {0: torch.cat(p)}, {0: torch.cat(q)}
    hook.layouts = {0: (0, 1, 2)}
    hook._follow_layout(FakeBucket([bias, wide, square]))  # DDP's new order
    assert hook.layouts[0] == (2, 1, 0)
    assert torch.equal(state.error_dict[0], torch.cat([error[2], error[1], error[0]]))
    assert torch.equal(state.p_memory_dict[0], torch.cat([p[1], p[0]]))  # grouped by shape, in bucket order
    assert torch.equal(state.q_memory_dict[0], torch.cat([q[1], q[0]]))
    hook._follow_layout(FakeBucket([bias, wide, square]))  # the same order again: left as it is
    assert torch.equal(state.error_dict[0], torch.cat([error[2], error[1], error[0]]))


def _diloco(*overrides: str) -> tuple[DiLoCoStrategy, nn.Module, torch.optim.Optimizer]:
    cfg = load_config(XOR, ["strategy=diloco", *overrides])
    strategy = DiLoCoStrategy(cfg, ONE)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy.setup(model)
    strategy.prepare(model, optimizer)
    strategy._anchor_here()
    return strategy, model, optimizer


def test_the_outer_step_is_nesterov_sgd_on_the_pseudo_gradient_every_h_steps():
    strategy, model, _ = _diloco("diloco.sync_every=2", "diloco.outer_lr=0.7", "diloco.outer_momentum=0.9")
    start = [p.detach().clone() for p in model.parameters()]
    reference = [nn.Parameter(p.clone()) for p in start]
    outer = torch.optim.SGD(reference, lr=0.7, momentum=0.9, nesterov=True)
    for round_ in range(2):
        moved = []
        for step in (1, 2):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * (step + round_))  # what an inner step would do
            moved.append([p.detach().clone() for p in model.parameters()])
            strategy.after_step(model, 2 * round_ + step)
        for r, replica in zip(reference, moved[-1]):
            r.grad = r.detach() - replica  # the pseudo-gradient (one process: the average is itself)
        outer.step()
        assert all(torch.equal(p, r) for p, r in zip(model.parameters(), reference))  # synced at step 2, 4
        assert strategy.local_steps == 0
    assert strategy.comm.figures()["comm_bytes"] == 2 * 8 * 4  # two syncs of 8 float32 numbers


def test_local_sgd_ends_a_round_on_the_replicas_average_and_sync_flushes_a_partial_round():
    strategy, model, _ = _diloco("diloco.sync_every=5", "diloco.outer_lr=1.0", "diloco.outer_momentum=0")
    with torch.no_grad():
        model.weight.add_(1.0)
    strategy.after_step(model, 1)  # mid-round: nothing exchanged
    assert strategy.local_steps == 1 and strategy.comm.bytes == 0
    replica = model.weight.detach().clone()
    strategy.sync(model)  # before an evaluation
    assert torch.equal(model.weight, replica) and torch.equal(strategy.anchor[0], replica)
    assert strategy.local_steps == 0


def test_with_overlap_the_outer_step_lands_late_and_keeps_the_steps_taken_meanwhile():
    strategy, model, _ = _diloco("diloco.sync_every=4", "diloco.overlap_steps=2", "diloco.outer_lr=0.7")
    start = model.weight.detach().clone()
    reference = nn.Parameter(start.clone())
    outer = torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True)
    for step in range(1, 7):
        with torch.no_grad():
            model.weight.add_(0.01 * step)
        if step == 4:
            at_sync = model.weight.detach().clone()
        strategy.after_step(model, step)
        if step == 4:
            assert strategy.pending is not None and torch.equal(model.weight, at_sync)  # not landed yet
    reference.grad = start - at_sync
    outer.step()
    assert strategy.pending is None
    torch.testing.assert_close(strategy.anchor[0], reference.detach(), rtol=0, atol=0)
    # The replica moved by as much as the anchor did, on top of steps 5 and 6.
    torch.testing.assert_close(model.weight, at_sync + 0.05 + 0.06 + (reference - at_sync), rtol=0, atol=1e-6)


def test_diloco_refuses_a_resume_on_another_number_of_processes_and_continues_on_the_same():
    strategy, model, optimizer = _diloco()
    with pytest.raises(ConfigError) as err:
        strategy.load_state_dict(None)
    assert err.value.key == "strategy" and "checkpoint.load=weights" in str(err.value)
    saved = strategy.state_dict()
    other, model2, _ = _diloco()
    with torch.no_grad():
        model2.weight.add_(5.0)
    other.load_state_dict(saved)
    assert torch.equal(model2.weight, model.weight) and torch.equal(other.anchor[0], strategy.anchor[0])
    other.load_state_dict({})  # a checkpoint of another strategy: its weights start a new round


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["ddp.comm_hook=fp16", "strategy=fsdp"], "ddp.comm_hook"),
        (["ddp.comm_hook=bf16", "trainer.exact=true"], "ddp.comm_hook"),
        (["ddp.comm_hook=powersgd", "engine=accelerate"], "ddp.comm_hook"),
        (["ddp.comm_hook=powersgd", "trainer.compile=true"], "ddp.comm_hook"),
        (["ddp.powersgd_rank=0"], "ddp.powersgd_rank"),
        (["ddp.powersgd_start_step=1"], "ddp.powersgd_start_step"),  # torch's own rule, named here
        (["strategy=diloco", "engine=accelerate"], "strategy"),
        (["strategy=diloco", "trainer.precision=fp16"], "trainer.precision"),
        (["strategy=diloco", "diloco.sync_every=0"], "diloco.sync_every"),
        (["strategy=diloco", "diloco.sync_every=5", "diloco.overlap_steps=5"], "diloco.overlap_steps"),
        (["strategy=diloco", "trainer.exact=true"], "trainer.exact"),
    ],
)
def test_what_the_slow_link_options_refuse_is_named(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(XOR, overrides)
    assert err.value.key == key


def test_the_step_log_shows_the_exchange_per_sample_and_the_wait_per_step():
    assert _comm_text({"comm_bytes_per_sample": 94_100.0, "comm_wait_s_per_step": 0.0123}) == (
        " | comm 94.1 KB/sample, wait 12.3 ms/step"
    )
    assert _comm_text({"comm_bytes_per_sample": 3.5}) == " | comm 3.5 B/sample"
    assert _comm_text({}) == ""


# ------------------------------------------------------------------------------------ torchrun x2


def _train(tmp_path, name, *overrides, nproc=2, **env):
    result = run_torchrun(
        nproc, "train", XOR, f"run.dir={tmp_path / name}", "trainer.epochs=2", *MLP, *overrides, env=clean_env(**env)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return newest_payload(tmp_path / name)


@pytest.mark.slow
def test_each_hook_and_local_sgd_every_step_train_as_ddp_does_on_two_processes(tmp_path):
    ddp = _train(tmp_path, "ddp")
    # Local SGD syncing after every step of plain SGD averages the replicas' steps: DDP's step, to rounding.
    local = _train(tmp_path, "local", "strategy=diloco", "diloco.sync_every=1", "diloco.outer_lr=1.0",
                   "diloco.outer_momentum=0")  # fmt: skip
    for k, w in ddp["model"].items():
        torch.testing.assert_close(local["model"][k], w, rtol=0, atol=1e-5)
    final = records(tmp_path / "ddp", "test")[-1]["loss"]
    for hook in ("fp16", "bf16", "powersgd"):
        run = _train(tmp_path, hook, f"ddp.comm_hook={hook}", "ddp.powersgd_start_step=3")
        assert run["model"].keys() == ddp["model"].keys()
        # Compressed gradients move the weights a little differently: the same loss to within a few percent.
        assert abs(records(tmp_path / hook, "test")[-1]["loss"] - final) < 0.05 * final, hook
    assert newest_payload(tmp_path / "powersgd")["strategy"][1]["powersgd"]["iter"] == 40  # rank 1's own state


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("powersgd", ["ddp.comm_hook=powersgd", "ddp.powersgd_start_step=3"]),
        ("diloco_mid_round", ["strategy=diloco", "diloco.sync_every=4"]),  # saved at 10: 2 steps into a round
        ("diloco_at_sync", ["strategy=diloco", "diloco.sync_every=5"]),  # saved at 10: right after a sync
        # synced at 8, its sum still travelling when saved at 10 (it lands at 11)
        ("diloco_in_flight", ["strategy=diloco", "diloco.sync_every=4", "diloco.overlap_steps=3"]),
    ],
)
def test_a_sigkill_resumes_bitwise_with_compressed_gradients_and_with_replicas(tmp_path, name, overrides):
    # Momentum: the inner optimizer has state of its own, per rank with diloco.
    common = ["checkpoint.every_steps=10", "optim.args={momentum: 0.9}", *overrides]
    straight = _train(tmp_path, "straight", *common)
    killed = run_torchrun(
        2, "train", XOR, f"run.dir={tmp_path / 'killed'}", "trainer.epochs=2", *MLP, *common,
        extra=("--max-restarts=1",), env=clean_env(KILL_RANK="1", KILL_STEP="15"),
        script="tests/helpers/kill_at_step.py",
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "(exitcode: -9)" in killed.stderr  # rank 1 died at step 15; both resumed from step 10
    resumed = newest_payload(tmp_path / "killed")
    assert_bitwise(straight["model"], resumed["model"])
    assert straight["optimizer"]["param_groups"] == resumed["optimizer"]["param_groups"]
    for rank in (0, 1):  # each rank's own state: PowerSGD's error feedback, or the replica and the anchor
        a, b = straight["strategy"][rank], resumed["strategy"][rank]
        flat_a, flat_b = _tensors(a), _tensors(b)
        assert flat_a.keys() == flat_b.keys() and flat_a
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), rank


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}.{key}").items()}


# ------------------------------------------------------------------------------------ a shaped link


@pytest.mark.slow
def test_on_a_100_mbit_link_diloco_sends_a_fraction_of_ddps_bytes(tmp_path):
    sys.path.insert(0, str(REPO))
    from bench.shaped import ADDRESSES, ShapedLink

    reason = ShapedLink.unavailable()
    if reason:
        pytest.skip(f"a shaped link {reason}")
    sent = {}
    wide = ["model.name=mlp", "model.args={hidden_sizes: [256, 256], activation: relu}", "log.plots=false"]
    runs = {"ddp": [], "diloco": ["strategy=diloco", "diloco.sync_every=10"]}
    for name, overrides in runs.items():
        with ShapedLink("100mbit") as link:
            procs = []
            for node in (0, 1):
                cmd = [
                    TORCHRUN,
                    "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
                    f"--master_addr={ADDRESSES[0]}", "--master_port=29531",
                    "-m", "distrain", "train", XOR, f"run.dir={tmp_path / name}", "trainer.epochs=1",
                    "checkpoint.every_epochs=0", *wide, *overrides,
                ]  # fmt: skip
                procs.append(link.start(node, cmd, clean_env(), log=tmp_path / f"{name}-{node}.log"))
            try:
                codes = [p.wait(timeout=120) for p in procs]
            except subprocess.TimeoutExpired:
                for p in procs:
                    os.killpg(p.pid, 9)
                raise
            assert codes == [0, 0], (tmp_path / f"{name}-0.log").read_text()[-3000:]
            sent[name] = link.tx_bytes()
    # 20 steps of a 67k-parameter model: ddp all-reduces 268 KB a step, diloco twice in all (and once at
    # the start both broadcast the weights): the interface counters see the difference.
    assert sent["diloco"] * 3 < sent["ddp"], sent
