"""Resuming with a changed config: changes that keep the run meaningful resume (and are logged), changes
that make the saved state meaningless or the continuation silently different exit 2 naming every
differing key; checkpoint.load=weights starts a new run from old weights."""

import pytest
import torch
from helpers.runs import XOR, newest_payload, records, run_cli

BASE = ["trainer.epochs=2", "checkpoint.every_epochs=1", "wandb.mode=disabled", "log.plots=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("base")
    assert run_cli("train", XOR, f"run.dir={run}", *BASE).returncode == 0
    return run


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize(
    "changes,keys",
    [
        (["model.args.num_hidden=8"], ["model.args.num_hidden"]),
        (["optim.name=adam"], ["optim.name"]),
        (["optim.lr=0.5"], ["optim.lr"]),  # never silently ignored: refused, not trained at the old lr
        (["data.args.noise_std=0.2", "seed=1"], ["data.args.noise_std", "seed"]),
        (["loss.name=mse"], ["loss.name"]),
    ],
)
def test_unsafe_changes_exit_2_naming_every_key(finished, tmp_path, changes, keys):
    run = copy_run(finished, tmp_path / "run")
    result = run_cli("train", XOR, f"run.dir={run}", *BASE[1:], "trainer.epochs=4", *changes)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"config key '{keys[0]}'" in result.stderr and "differs from the run being resumed" in result.stderr
    assert all(f"{k}:" in result.stderr for k in keys) and "checkpoint.load=weights" in result.stderr
    assert max(r["epoch"] for r in records(run)) == 1  # nothing trained, nothing rewritten
    assert (run / "config.yaml").read_text() == (finished / "config.yaml").read_text()  # the record stays true


def test_safe_changes_resume_and_are_logged(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    result = run_cli(
        "train", XOR, f"run.dir={run}", *BASE[1:], "trainer.epochs=4", "log.every_steps=7", "checkpoint.keep_last=3"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming with a changed setting: trainer.epochs: 2 -> 4" in result.stdout
    assert "resumed from" in result.stdout and sorted({r["epoch"] for r in records(run)}) == [0, 1, 2, 3]


def test_load_weights_starts_a_new_run_from_old_weights(finished, tmp_path):
    old = newest_payload(finished)
    result = run_cli(
        "train",
        XOR,
        f"run.dir={tmp_path / 'new'}",
        *BASE[1:],
        "trainer.epochs=1",
        f"checkpoint.resume={finished}",
        "checkpoint.load=weights",
        "optim.lr=1e-30",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "started a new run from the weights of" in result.stdout
    new = newest_payload(tmp_path / "new")
    assert new["epoch"] == 1 and new["global_step"] == 20  # its own progress, from zero
    assert all(torch.equal(old["model"][k], new["model"][k]) for k in old["model"])  # lr 1e-30: unchanged
    bad = run_cli("train", XOR, f"run.dir={tmp_path / 'bad'}", "checkpoint.load=weights")
    assert bad.returncode == 2 and "'checkpoint.load'" in bad.stderr
