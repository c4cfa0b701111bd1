"""strategy: fsdp (FSDP2) on real gloo process groups: equal to DDP and to one process, sharded checkpoints
that resume exactly, on other world sizes and across strategies, that are skipped when damaged, and export.

The model: the catalogue's MLP with each Linear a unit of its own (fsdp.units), so several units are
gathered and freed per step; SGD with momentum (AdamW would hide a gradient off by a factor of the world
size) and the momentum buffers in the optimizer state. 8 evaluation batches over 3 ranks leave them 2, 3
and 3: the rank with fewer runs filler forwards, or the sharded forwards would hang.
"""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
import yaml
from helpers.runs import (
    PYTHON,
    REPO,
    XOR,
    assert_checkpoints_verify,
    clean_env,
    last_record,
    newest_weights,
    printed_json,
    records,
    run_cli,
    run_group,
    run_torchrun,
)

from distrain.checkpoint.files import CheckpointError
from distrain.checkpoint.sharded import read_sharded
from distrain.checkpoint.store import find_resumable, resolve_checkpoint
from distrain.config.schema import FSDPConfig
from distrain.strategies.fsdp import choose_units

ARGS = (
    "model.name=mlp",
    "model.args={hidden_sizes: [16, 16], activation: tanh}",
    "fsdp.units=[Linear]",
    "optim.name=sgd",
    "optim.lr=0.1",
    "optim.args={momentum: 0.9}",
    "data.global_batch_size=120",
    "data.eval_batch_size=64",
    "trainer.epochs=2",
    "checkpoint.every_epochs=1",
    "checkpoint.keep_last=0",
    "log.plots=false",
)
FSDP = ("strategy=fsdp",)
HALF, END = "step-00000021", "step-00000042"  # 21 steps per epoch: the checkpoints of epochs 1 and 2


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _test_sizes(found):
    return [r["samples"] for r in found if r["split"] == "test"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    for name, nproc, extra in (("ddp2", 2, ()), ("fsdp2", 2, FSDP), ("fsdp3", 3, FSDP)):
        result = run_torchrun(nproc, "train", XOR, f"run.dir={root / name}", *ARGS, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("train", XOR, f"run.dir={root / 'fsdp1'}", *ARGS, *FSDP)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _resume_from(runs, tmp_path, source, name, nproc, *extra):
    """A new run directory holding only `source`'s checkpoint `name` (and config), resumed on nproc ranks."""
    run = tmp_path / f"{source}_on_{nproc}"
    (run / "checkpoints").mkdir(parents=True)
    for item in (runs / source / "checkpoints").glob(f"{name.removesuffix('.pt')}*"):  # and its manifest
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, run / "checkpoints" / item.name)
    args = ("train", XOR, f"run.dir={run}", *ARGS, *extra)
    result = run_torchrun(nproc, *args) if nproc > 1 else run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / name}" in result.stdout, result.stdout[-2000:]
    return run, result


@pytest.mark.slow
def test_fsdp_equals_ddp_and_one_process(runs):
    ddp = newest_weights(runs / "ddp2")
    # 2 ranks: a reduce-scatter of two summands is the all-reduce's sum, bitwise.
    assert max_diff(newest_weights(runs / "fsdp2"), ddp) == 0.0
    # 3 ranks and one process: the gradient sums are added in another order; float32 rounding only.
    assert max_diff(newest_weights(runs / "fsdp3"), ddp) < 1e-6
    assert max_diff(newest_weights(runs / "fsdp1"), ddp) < 1e-6
    ref = records(runs / "ddp2")
    for name in ("fsdp2", "fsdp3", "fsdp1"):
        got = records(runs / name)
        assert _test_sizes(got) == _test_sizes(ref) == [500] * 2  # every test sample once, every epoch
        assert [r["split"] for r in got] == [r["split"] for r in ref]
    same = records(runs / "fsdp2")
    assert [r["loss"] for r in same] == [r["loss"] for r in ref]  # bitwise weights: bitwise figures
    # The checkpoint is sharded: each rank wrote its own file, listed with its checksum in the manifest.
    folder = runs / "fsdp2" / "checkpoints" / END
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    manifest = (folder.parent / f"{END}.json").read_text()
    assert all(name in manifest for name in ("__0_0.distcp", "__1_0.distcp", ".metadata", "state.pt"))
    assert not list(folder.parent.glob(".*tmp*"))  # no temporary folder left


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_3_and_on_1(runs, tmp_path):
    end = newest_weights(runs / "fsdp2")
    for nproc in (3, 1):
        run, result = _resume_from(runs, tmp_path, "fsdp2", HALF, nproc, *FSDP)
        assert "resuming a 2-process checkpoint on" in result.stdout
        assert max_diff(newest_weights(run), end) < 1e-6
        assert _test_sizes(records(run)) == [500]


@pytest.mark.slow
def test_ddp_checkpoint_resumes_under_fsdp_and_back_bitwise(runs, tmp_path):
    end = newest_weights(runs / "ddp2")
    run, result = _resume_from(runs, tmp_path, "ddp2", f"{HALF}.pt", 2, *FSDP)
    assert "strategy: 'ddp' -> 'fsdp'" in result.stdout
    assert max_diff(newest_weights(run), end) == 0.0  # the momentum buffers came along, sharded
    run, result = _resume_from(runs, tmp_path, "fsdp2", HALF, 2)
    assert "strategy: 'fsdp' -> 'ddp'" in result.stdout
    assert max_diff(newest_weights(run), end) == 0.0


@pytest.mark.slow
def test_sigkill_of_a_rank_resumes_from_the_sharded_checkpoint_bitwise(runs, tmp_path):
    env = clean_env(KILL_STEP="25", KILL_RANK="1")
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={tmp_path}",
        *ARGS,
        *FSDP,
        "checkpoint.every_steps=10",
        extra=("--max-restarts=1",),
        script="tests/helpers/kill_at_step.py",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(exitcode: -9)" in result.stderr  # the kill really happened
    # The newest save before the kill: the epoch-1 end (step 21; the step saves are at 10 and 20).
    assert f"resumed from {tmp_path / 'checkpoints' / 'step-00000021'}" in result.stdout, result.stdout[-2000:]
    assert max_diff(newest_weights(tmp_path), newest_weights(runs / "fsdp2")) == 0.0
    ref, got = records(runs / "fsdp2"), records(tmp_path)
    assert [(r["epoch"], r["split"], r["loss"]) for r in got] == [(r["epoch"], r["split"], r["loss"]) for r in ref]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_background_saves_change_nothing_and_every_checkpoint_verifies(runs, tmp_path, strategy):
    run = tmp_path / strategy
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={run}",
        *ARGS,
        f"strategy={strategy}",
        "checkpoint.async_save=true",
        "checkpoint.every_steps=5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "saving in the background" in result.stdout
    assert max_diff(newest_weights(run), newest_weights(runs / f"{strategy}2")) == 0.0
    kept = assert_checkpoints_verify(run)  # keep_last=0: every save, each complete and verified
    assert sorted(int(p.name[5:13]) for p in kept) == sorted(set(range(5, 42, 5)) | {21, 42})
    assert not list((run / "checkpoints").glob(".*tmp*"))
    # A checkpoint written while the next steps ran (and whose staging buffers the step-21 save reused)
    # holds exactly the state of its step: resumed, it ends bitwise equal.
    middle = next(p for p in kept if p.name.startswith("step-00000020"))
    again = run_torchrun(
        2, "train", XOR, f"run.dir={tmp_path / 'again'}", *ARGS, f"strategy={strategy}", f"checkpoint.resume={middle}"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert max_diff(newest_weights(tmp_path / "again"), newest_weights(runs / f"{strategy}2")) == 0.0


@pytest.mark.slow
def test_sigkill_during_a_background_write_loses_only_that_checkpoint(runs, tmp_path):
    # Rank 0 dies right after handing the step-20 save to its writer thread: that save may be cut short;
    # the restart resumes from whichever complete checkpoint is newest and ends bitwise equal.
    env = clean_env(KILL_STEP="20", KILL_RANK="0")
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={tmp_path}",
        *ARGS,
        *FSDP,
        "checkpoint.every_steps=10",
        "checkpoint.async_save=true",
        extra=("--max-restarts=1",),
        script="tests/helpers/kill_at_step.py",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(exitcode: -9)" in result.stderr
    assert "resumed from" in result.stdout
    assert max_diff(newest_weights(tmp_path), newest_weights(runs / "fsdp2")) == 0.0
    # Every checkpoint left is complete and verifies: the one the kill cut short (if any) was written again
    # by the restart, which resumed from one before it; keep_last=0 keeps the saves of steps 10, 20, 21, 30
    # and 40 (and the end, 42).
    kept = assert_checkpoints_verify(tmp_path, at_least=6)
    assert sorted(int(p.name[5:13]) for p in kept) == [10, 20, 21, 30, 40, 42]


@pytest.mark.slow
def test_options_activation_checkpointing_and_keeping_gathered_weights_change_nothing(runs, tmp_path):
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={tmp_path / 'opts'}",
        *ARGS,
        *FSDP,
        "fsdp.activation_checkpointing=true",
        "fsdp.reshard_after_forward=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_diff(newest_weights(tmp_path / "opts"), newest_weights(runs / "fsdp2")) == 0.0  # recomputed, not changed
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={tmp_path / 'bf16'}",
        *ARGS,
        *FSDP,
        "fsdp.param_dtype=bfloat16",
        "checkpoint.every_epochs=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fp32 = records(runs / "fsdp2", "test")[1]
    bf16 = records(tmp_path / "bf16", "test")[1]
    assert bf16["samples"] == 500 and abs(bf16["loss"] - fp32["loss"]) < 0.02  # bf16 forward and backward


@pytest.mark.slow
def test_export_loads_into_the_bare_model_with_the_runs_test_figures(runs, tmp_path):
    from safetensors.torch import load_file

    from distrain.config.parse import load_config
    from distrain.data.datasets import xor
    from distrain.models import mlp

    out = tmp_path / "model.pt"
    result = run_cli("export", str(runs / "fsdp2"), "--out", str(out))
    assert result.returncode == 0 and result.stdout.strip() == str(out), result.stderr
    state = torch.load(out, weights_only=True)
    model = mlp(num_inputs=2, num_outputs=1, hidden_sizes=[16, 16], activation="tanh")
    model.load_state_dict(state)  # the bare nn.Module, no distrain in between
    assert run_cli("export", str(runs / "fsdp2"), "--out", str(tmp_path / "m.safetensors")).returncode == 0
    assert max_diff(load_file(tmp_path / "m.safetensors"), state) == 0.0
    shown = yaml.safe_load(run_cli("inspect", str(runs / "fsdp2")).stdout)
    assert shown["sharded"] is True and shown["model_parameters"] == sum(t.numel() for t in state.values())
    # The test figures of the run's last evaluation, computed here another way: plain torch, one batch.
    cfg = load_config(XOR)
    test = xor(**cfg.data.args, seed=cfg.seed).test
    x, y = test.tensors
    with torch.no_grad():
        logits = model(x).squeeze(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()).item()
    accuracy = ((logits > 0).long() == y.long()).sum().item() / len(y)
    last = last_record(runs / "fsdp2", "test")
    assert last["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert last["loss"] == pytest.approx(loss, rel=1e-6)
    # distrain eval reads the sharded checkpoint too, in one process: the run's own figures.
    result = run_cli("eval", XOR, f"checkpoint={runs / 'fsdp2'}", *ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = printed_json(result)
    assert (printed["test_loss"], printed["test_accuracy"], printed["test_samples"]) == (
        last["loss"],
        last["accuracy"],
        500,
    )  # exact: the evaluation sums are those of one process


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated shard", "flipped byte", "no manifest", "missing shard"])
def test_a_damaged_sharded_checkpoint_is_skipped(runs, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(runs / "fsdp2", run)
    newest = run / "checkpoints" / END
    shard = newest / "__1_0.distcp"
    if damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "flipped byte":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "no manifest":
        newest.with_suffix(".json").unlink()
    else:
        shard.unlink()
    assert find_resumable(run) == run / "checkpoints" / HALF  # the one before it
    with pytest.raises(CheckpointError, match=str(newest)):
        resolve_checkpoint(newest)  # named directly: refused with the reason, not loaded
    if damage != "truncated shard":
        return
    # And a resume really continues from the one before it (one process suffices to show it).
    result = run_cli("train", XOR, f"run.dir={run}", *ARGS, *FSDP)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / HALF}" in result.stdout
    assert "skipping checkpoint" in result.stdout + result.stderr


class _RunsCode:
    def __reduce__(self):
        return (exec, (f"open({str(REPO / 'tests' / 'PWNED')!r}, 'w').write('x')",))


@pytest.mark.slow
def test_a_metadata_pickle_that_would_run_code_is_refused(runs, tmp_path):
    folder = tmp_path / END
    shutil.copytree(runs / "fsdp2" / "checkpoints" / END, folder)
    (folder / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError, match="refused"):
        read_sharded(folder)
    assert not (REPO / "tests" / "PWNED").exists()


def test_units_by_class_name_and_by_size():
    from distrain.models import mlp

    model = mlp(num_inputs=10, num_outputs=2, hidden_sizes=[100, 100])  # Linear 1100, 10100, 202 parameters
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert choose_units(model, FSDPConfig(units=["Linear"])) == list(reversed(linears))
    assert choose_units(model, FSDPConfig(min_unit_params=1000)) == linears[:2]  # the last is too small alone
    assert choose_units(model, FSDPConfig(min_unit_params=10**6)) == []  # all in the root unit


def test_config_mistakes_are_refused_with_the_key(tmp_path):
    result = run_cli("train", XOR, f"run.dir={tmp_path / 'a'}", *ARGS, *FSDP, "fsdp.units=[Conv9]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config key 'fsdp.units': the model has no module of class Conv9" in result.stderr
    assert "Linear" in result.stderr  # the classes it does have
    assert not (tmp_path / "a").exists()  # refused before the run directory exists
    result = run_cli("train", XOR, f"run.dir={tmp_path / 'b'}", *FSDP, "engine=accelerate")
    assert result.returncode == 2 and "config key 'strategy': fsdp runs on the native engine" in result.stderr


def test_an_optimizer_object_given_to_fit_with_fsdp_is_refused(tmp_path):
    code = (
        "import torch, distrain\n"
        "model = torch.nn.Linear(2, 1)\n"
        f"cfg = distrain.load_config({XOR!r}, ['strategy=fsdp', 'run.dir={tmp_path}'])\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "distrain.run(lambda: distrain.fit(cfg, model=model, optimizer=optimizer))\n"
    )
    result = run_group([PYTHON, "-c", code], env=clean_env(), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "pass a function of the parameters instead" in result.stderr
