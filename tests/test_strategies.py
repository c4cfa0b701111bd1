"""The strategy seam (distrain/strategies/base.py) and what the loop builds on it, one component at a time
(milliseconds, one process): which strategy a config chooses, that nothing outside strategies/ asks
whether it runs exact mode, the step convention (StrategyStep) against a strategy that records its calls,
the per-rank strategy state in a checkpoint's payload, typed stop reasons, and the optimizer set of
several models. The strategies' end-to-end figures are in test_exact.py, test_fsdp.py, test_engines.py
and test_several_models.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from distrain.config.parse import load_config
from distrain.data import Batch
from distrain.errors import ConfigError
from distrain.launch.dist import DistContext
from distrain.launch.env import detect
from distrain.loop.several import OptimizerSet
from distrain.loop.state import TrainState
from distrain.loop.steps import StrategyStep
from distrain.loop.stopping import StopKind, Stopper, StopReason
from distrain.strategies import build_strategy
from distrain.strategies.base import Gradients, ModelSet
from distrain.strategies.ddp import DDPStrategy
from distrain.strategies.exact import ExactStrategy
from distrain.strategies.fsdp import FSDPStrategy

REPO = Path(__file__).resolve().parents[1]
XOR = str(REPO / "configs" / "xor.yaml")
ONE = DistContext(detect({}), torch.device("cpu"), None)


# ------------------------------------------------------------------------------------ choosing


@pytest.mark.parametrize(
    "overrides, kind",
    [
        ([], DDPStrategy),
        (["strategy=fsdp"], FSDPStrategy),
        (["strategy=exact"], ExactStrategy),
        (["trainer.exact=true"], ExactStrategy),  # the older spelling of the same strategy
    ],
)
def test_the_config_chooses_the_strategy(overrides, kind):
    threads = torch.get_num_threads()
    try:
        strategy = build_strategy(load_config(XOR, overrides), ONE)
    finally:
        torch.set_num_threads(threads)  # exact mode fixes the thread count
    assert type(strategy) is kind
    assert strategy.checkpoint_format == ("sharded" if kind is FSDPStrategy else "whole")
    assert strategy.figure_units == (2.0**24 if kind is ExactStrategy else None)


def test_exact_mode_refuses_what_it_cannot_make_exact_by_name():
    threads = torch.get_num_threads()
    with pytest.raises(ConfigError) as err:
        load_config(XOR, ["strategy=exact", "engine=accelerate"])
    assert err.value.key == "trainer.exact"
    for spelling, key in (("strategy=exact", "strategy"), ("trainer.exact=true", "trainer.exact")):
        strategy = build_strategy(load_config(XOR, [spelling]), ONE)  # the key named as the config spelt it
        with pytest.raises(ConfigError, match=r"SyncBatchNorm exact \(1\)") as err:
            strategy.setup(nn.Sequential(nn.Linear(2, 4), nn.SyncBatchNorm(4)))
        assert err.value.key == key
        with pytest.raises(ConfigError) as err:
            strategy.setup(ModelSet({"g": nn.Linear(2, 2), "d": nn.Linear(2, 1)}))
        assert err.value.key == key
    torch.set_num_threads(threads)


# Reads of exact mode's switches and names: allowed only where the strategy is (and where the config
# declares its keys).
EXACT_NAMES = {"exact", "exact_chunk", "exact_threads", "is_exact", "ExactStrategy", "ExactSum", "ExactChunks"}


def exact_branch_sites(root: Path) -> list[str]:
    sites = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("strategies/") or rel == "config/schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in EXACT_NAMES:
                sites.append(f"{rel}:{node.lineno} {name}")
    return sites


def test_nothing_outside_the_strategies_asks_for_exact_mode():
    assert exact_branch_sites(REPO / "distrain") == []


def test_the_exact_mode_scan_finds_a_branch(tmp_path):
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "steps.py").write_text("def f(cfg):\n    return 1 if cfg.trainer.exact else 2\n")
    assert exact_branch_sites(tmp_path) == ["loop/steps.py:2 exact"]


# ------------------------------------------------------------------------------------ the step convention


class Recording:
    """A strategy that records what the step asks of it, in order; its gradients: the loss's."""

    def __init__(self):
        self.calls = []

    def gradients(self, model, batch, objective, global_step):
        self.calls.append(("gradients", global_step))
        loss = model(batch.inputs).sum()
        loss.backward()
        return Gradients(loss.detach(), [("outputs", batch.targets)])

    def step(self, optimizer, model, clip):
        self.calls.append(("step",))
        optimizer.step()

    def after_step(self, model, global_step):
        self.calls.append(("after_step", global_step))


class Guard:
    def __init__(self, allow):
        self.allow = allow

    def allows_step(self, loss):
        return self.allow


class Meter:
    def __init__(self):
        self.records = []

    def add(self, *record):
        self.records.append(record)


class Progress:
    global_step = 7


@pytest.mark.parametrize("allow", [True, False])
def test_a_step_asks_the_strategy_for_gradients_then_steps_and_a_vetoed_step_records_nothing(allow):
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    strategy, meter = Recording(), Meter()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = StrategyStep(strategy, model, optimizer, None, None, meter=meter, guard=Guard(allow), progress=Progress())
    batch = Batch(0, torch.ones(4, 3), torch.zeros(4), 4)
    assert step(batch) is allow
    if allow:
        assert strategy.calls == [("gradients", 7), ("step",), ("after_step", 8)]
        assert meter.records == [("outputs", batch.targets)]
        assert not torch.equal(model.weight, before)
    else:
        assert strategy.calls == [("gradients", 7)]
        assert meter.records == [] and torch.equal(model.weight, before)


# ------------------------------------------------------------------------------------ state in checkpoints


class Stateful:
    def __init__(self, state):
        self.state, self.loaded = state, "never"

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.loaded = state


class Totals:
    def load(self, sums):
        self.sums = sums


@pytest.mark.parametrize(
    "world_size, saved, expected",
    [
        (2, [{"rank": 0}, {"rank": 1}], {"rank": 1}),  # its own
        (3, [{"rank": 0}, {"rank": 1}], None),  # per-rank state of another world size: None
        (3, [{}, {}], {}),  # a strategy that keeps none: nothing to continue, on any world size
        (2, [], {}),  # a checkpoint from before strategies kept state
    ],
)
def test_each_rank_gets_its_own_strategy_state_back_and_none_on_another_world_size(world_size, saved, expected):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    before = TrainState(model, optimizer, scheduler, Stopper(load_config(XOR, []).stop), Totals())
    payload = before.to_payload({}, 2, {}, torch.zeros(3), strategy_states=saved)
    assert payload["strategy"] == saved
    strategy = Stateful({})
    state = TrainState(model, optimizer, scheduler, Stopper(load_config(XOR, []).stop), Totals(), strategy=strategy)
    state.load_payload(payload, rank=1, world_size=world_size)
    assert strategy.loaded == expected


def test_stop_reasons_are_typed_and_read_back_from_old_checkpoints():
    stopper = Stopper(load_config(XOR, ["stop.window=2", "stop.threshold=1.0"]).stop)
    from distrain.reporting.figures import EpochMetrics

    assert stopper.update({"train": EpochMetrics({"loss": 0.5}, 4)}) is None
    reason = stopper.update({"train": EpochMetrics({"loss": 0.4}, 4)})
    assert reason.kind is StopKind.CONVERGED and reason.startswith("converged")
    stopper.stopped = reason
    again = Stopper(stopper.cfg)
    again.load_state_dict(stopper.state_dict())
    assert again.stopped == reason and again.stopped.kind is StopKind.CONVERGED
    # A checkpoint written before the kind was saved: read by its words.
    old = {"best": None, "bad_epochs": 0, "train_losses": [], "stopped": "trainer.max_steps (5) reached"}
    again.load_state_dict(old)
    assert again.stopped.kind is StopKind.MAX_STEPS
    assert StopReason.of_state("another rank stopped", None).kind is StopKind.OTHER_RANK
    import copy
    import pickle

    for copied in (pickle.loads(pickle.dumps(reason)), copy.deepcopy(reason)):  # FitResult.stopped holds one
        assert copied == reason and copied.kind is StopKind.CONVERGED


# ------------------------------------------------------------------------------------ several models


def test_the_optimizer_set_shares_its_optimizers_groups_also_after_a_resume():
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    both = OptimizerSet({"g": torch.optim.SGD(g.parameters(), lr=0.1), "d": torch.optim.Adam(d.parameters(), lr=0.01)})
    both.load_state_dict(both.state_dict())  # torch gives each optimizer new group dicts here
    torch.optim.lr_scheduler.LambdaLR(both, lambda step: 0.5)  # sets the lr through the set's groups
    assert [group["lr"] for group in both.optimizers["g"].param_groups] == [0.05]
    assert [group["lr"] for group in both.optimizers["d"].param_groups] == [0.005]
    assert list(both.state_dict()) == ["g", "d"]
