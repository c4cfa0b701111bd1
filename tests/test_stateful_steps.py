"""Stateful steps: examples/char_lm.py, an LSTM language model trained with truncated backpropagation
through time, its hidden state carried per rank from batch to batch (data.streams). It agrees on 1 and 2
processes, its per-rank state is in every checkpoint, a SIGKILL mid-epoch under torchrun --max-restarts=1
resumes bitwise, and a resume on another world size is refused by name; the hooks' order, in process."""

import pytest
import torch
from helpers.runs import PYTHON, REPO, assert_bitwise, clean_env, newest_payload, records, run_group, run_torchrun
from torch import nn
from torch.utils.data import TensorDataset

import distrain

LM = [str(REPO / "examples" / "char_lm.py"), str(REPO / "examples" / "char_lm.yaml")]
ARGS = ("trainer.epochs=2", "log.plots=false", "checkpoint.keep_last=0")


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    """The language model on 1 process, on 2, and on 2 with rank 1 SIGKILLed after step 50 of 124 (the
    newest checkpoint then is step 40's, mid-epoch 0 of 62 steps each)."""
    root = tmp_path_factory.mktemp("char_lm")
    one = run_group([PYTHON, *LM, f"run.dir={root / 'one'}", *ARGS], env=clean_env(), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_torchrun(2, *LM[1:], f"run.dir={root / 'two'}", *ARGS, script="examples/char_lm.py")
    assert two.returncode == 0, two.stderr[-3000:]
    killed = run_torchrun(
        2,
        *LM,
        f"run.dir={root / 'killed'}",
        *ARGS,
        extra=("--max-restarts=1",),
        env=clean_env(KILL_RANK="1", KILL_STEP="50"),
        script="tests/helpers/kill_at_step.py",
    )
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "resumed from" in killed.stdout and "step-00000040" in killed.stdout
    return root


@pytest.mark.slow
def test_the_tbptt_model_agrees_on_1_and_2_processes(lm_runs):
    a, b = torch.load(lm_runs / "one" / "model.pt"), torch.load(lm_runs / "two" / "model.pt")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-4) for k in a)
    val_a, val_b = records(lm_runs / "one", "val"), records(lm_runs / "two", "val")
    assert [r["samples"] for r in val_a] == [r["samples"] for r in val_b] == [496, 496]  # every segment once
    assert [r["loss"] for r in val_a] == pytest.approx([r["loss"] for r in val_b], rel=1e-5)
    assert val_a[-1]["loss"] < 1.0  # learned the grammar: ~2.9 nats per character untrained


@pytest.mark.slow
def test_each_ranks_hidden_state_is_in_the_checkpoint_and_a_kill_resumes_bitwise(lm_runs):
    states = torch.load(lm_runs / "two" / "checkpoints" / "step-00000040.pt", weights_only=False)["step"]
    # Mid-epoch, one per rank: the LSTM's (h, c), [layers, the rank's 16 of 32 streams, hidden] = [1, 16, 64].
    assert len(states) == 2 and all(s["state"][0].shape == (1, 16, 64) for s in states)
    assert not torch.equal(states[0]["state"][0], states[1]["state"][0])
    assert_bitwise(torch.load(lm_runs / "two" / "model.pt"), torch.load(lm_runs / "killed" / "model.pt"))
    untimed = [
        [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in records(lm_runs / run)]
        for run in ("two", "killed")
    ]
    assert untimed[0] == untimed[1]  # every figure of every epoch


@pytest.mark.slow
def test_a_resume_on_another_world_size_is_refused_naming_the_steps_state(lm_runs, tmp_path):
    import shutil

    shutil.copytree(lm_runs / "one", tmp_path / "run")
    result = run_torchrun(
        2, *LM[1:], f"run.dir={tmp_path / 'run'}", "trainer.epochs=3", "log.plots=false", script="examples/char_lm.py"
    )
    assert result.returncode != 0, result.stderr[-3000:]  # each rank exits 2; torchrun says 1
    assert "the step's state of each of 1 processes" in result.stderr and "resume with 1 processes" in result.stderr


class Recorder:
    """A stateful step that counts the batches since its split started, and records the hooks."""

    def __init__(self):
        self.count, self.events = 0, []

    def on_split_start(self, split):
        self.events.append((split, distrain.probing()))
        self.count = 0

    def __call__(self, model, batch):
        x, y = batch
        self.count += 1
        return ((model(x) - y) ** 2).mean(dim=1)

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_the_hooks_come_at_each_epoch_and_split_and_the_probe_leaves_the_state(tmp_path):
    step = Recorder()
    step.count = 7  # the probe's call is undone: the state is what it was
    raw = {
        "seed": 0,
        "run": {"dir": str(tmp_path)},
        "data": {"global_batch_size": 4, "eval_batch_size": 4},
        "optim": {"lr": 0.1},
        "trainer": {"epochs": 2},
        "checkpoint": {"every_steps": 3},
        "log": {"plots": False},
        "wandb": {"mode": "disabled"},
    }
    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    distrain.fit(
        distrain.load_config(raw), model=nn.Linear(2, 1), train_data=data, val_data=data, test_data=data, step=step
    )
    assert step.events == [("train", False), ("val", False), ("test", False)] * 2
    assert step.count == 2  # the test split's two batches
    # Step 3 (mid-epoch 1) saved this rank's count since the epoch began: 1 batch of epoch 1.
    assert newest_payload(tmp_path)["step"] == [{"count": 2}]
    assert torch.load(tmp_path / "checkpoints" / "step-00000003.pt", weights_only=False)["step"] == [{"count": 1}]


@pytest.mark.parametrize(
    "overrides,problem",
    [
        (["data.streams=true"], "needs data.shuffle: false"),
        (["data.streams=true", "data.shuffle=false", "trainer.exact=true"], "cannot be used in exact mode"),
        (["data.streams=true", "data.shuffle=false", "data.val_fraction=0.1"], "cannot be used with data.val_fraction"),
    ],
)
def test_data_streams_refuses_what_would_break_the_streams(overrides, problem):
    from helpers.runs import XOR

    from distrain.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        distrain.load_config(XOR, overrides)
    assert info.value.key == "data.streams" and problem in str(info.value)


def _fit(tmp_path, step, optimizer=None, **more):
    raw = {
        "seed": 0,
        "run": {"dir": str(tmp_path)},
        "data": {"global_batch_size": 4, "eval_batch_size": 4},
        "trainer": {"epochs": 2},
        "log": {"plots": False},
        "wandb": {"mode": "disabled"},
    }
    if optimizer is None:
        raw["optim"] = {"lr": 0.1}
    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    model = nn.Linear(2, 1)
    opt = optimizer(model) if optimizer else None
    return distrain.fit(
        distrain.load_config(raw), model=model, train_data=data, val_data=data, step=step, optimizer=opt
    )


def test_a_step_with_only_the_hook_gets_every_split_start(tmp_path):
    events = []

    class Resetting:
        def on_split_start(self, split):
            events.append(split)

        def __call__(self, model, batch):
            x, y = batch
            return ((model(x) - y) ** 2).mean(dim=1)

    _fit(tmp_path, Resetting())
    assert events == ["train", "val"] * 2


def test_a_state_a_checkpoint_cannot_hold_is_refused_at_the_first_save(tmp_path):
    from collections import namedtuple

    from distrain.errors import ArgumentError

    Pair = namedtuple("Pair", "h c")

    class Holding(Recorder):
        def state_dict(self):
            return {"state": Pair(torch.zeros(1), torch.zeros(1))}

        def load_state_dict(self, state):
            pass

    with pytest.raises(ArgumentError) as info:
        _fit(tmp_path, Holding())
    assert info.value.key == "step" and "namedtuple" in str(info.value)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # nothing written


def test_a_stateful_step_with_a_closure_optimizer_is_refused(tmp_path):
    from distrain.errors import ArgumentError

    with pytest.raises(ArgumentError) as info:
        _fit(tmp_path, Recorder(), optimizer=lambda model: torch.optim.LBFGS(model.parameters()))
    assert info.value.key == "step" and "LBFGS calls the step many times per batch" in str(info.value)
