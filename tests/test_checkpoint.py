"""Checkpoint files: atomic verified saves, damaged files skipped, code-carrying files refused, RNG state."""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from helpers.runs import XOR, assert_checkpoints_verify, run_cli, weights_at

from distrain.checkpoint.files import CheckpointError, Manifest
from distrain.checkpoint.store import capture_rng, find_resumable, list_checkpoints, load_payload, restore_rng
from distrain.config.parse import load_config
from distrain.loop.trainer import train

SHORT = [
    "trainer.epochs=3",
    "checkpoint.every_steps=7",
    "checkpoint.every_epochs=1",
    "checkpoint.keep_last=0",
    "optim.args.momentum=0.9",
]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(load_config(XOR, [f"run.dir={run}", *SHORT]), environ={})
    return run


def test_saves_are_complete_and_verified(saved_run):
    folder = saved_run / "checkpoints"
    steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(folder)]
    assert steps == sorted({*range(7, 61, 7), 20, 40, 60}, reverse=True)
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]  # no temporary files left behind
    for path in assert_checkpoints_verify(saved_run):
        manifest = Manifest.read(path)
        payload = load_payload(path)
        assert payload["global_step"] == manifest.global_step
        assert set(payload) >= {
            "model",
            "optimizer",
            "epoch",
            "step_in_epoch",
            "global_step",
            "rng",
            "world_size",
            "config",
            "distrain_version",
            "torch_version",
            "epoch_totals",
        }
    assert (folder / "latest.json").read_text() == '{"file": "step-00000060.pt"}'


def test_keep_last_prunes_old_checkpoints(tmp_path):
    train(
        load_config(
            XOR,
            [
                f"run.dir={tmp_path}",
                "trainer.epochs=2",
                "checkpoint.every_steps=5",
                "checkpoint.every_epochs=1",
                "checkpoint.keep_last=2",
            ],
        ),
        environ={},
    )
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000040.pt", "step-00000035.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.json")) == [
        "latest.json",
        "step-00000035.json",
        "step-00000040.json",
    ]


def test_a_step_save_that_ends_an_epoch_is_written_once_with_the_epoch_metrics(tmp_path, capsys):
    train(
        load_config(
            XOR,
            [
                f"run.dir={tmp_path}",
                "trainer.epochs=2",
                "checkpoint.every_steps=5",
                "checkpoint.every_epochs=1",
                "checkpoint.keep_last=0",
            ],
        ),
        environ={},
    )
    saved = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("saved ")]
    assert [os.path.basename(p) for p in saved] == [f"step-{s:08d}.pt" for s in range(5, 41, 5)]  # each once
    for step in (20, 40):  # 20 steps an epoch: the epoch's save, carrying its metrics
        metrics = Manifest.read(tmp_path / "checkpoints" / f"step-{step:08d}.pt").metrics
        assert {"train_loss", "test_loss", "test_accuracy"} <= set(metrics)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "no_manifest"])
def test_damaged_newest_checkpoint_is_skipped(saved_run, tmp_path, damage, caplog):
    run = tmp_path / "run"
    os.system(f"cp -r {saved_run} {run}")
    newest, previous = list_checkpoints(run / "checkpoints")[:2]
    data = newest.read_bytes()
    rng = random.Random(damage)
    if damage == "truncate":
        newest.write_bytes(data[: rng.randrange(1, len(data))])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(len(data)))
    elif damage == "flip":  # same size, one byte changed in the middle: only the checksum sees it
        i = len(data) // 2
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    else:  # the save was killed after the rename and before the manifest
        newest.with_suffix(".json").unlink()
    with caplog.at_level("WARNING"):
        assert find_resumable(run) == previous
    assert newest.name in caplog.text and "skipping" in caplog.text


@pytest.mark.parametrize("offset_fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_files_never_load(saved_run, tmp_path, offset_fraction):
    path = list_checkpoints(saved_run / "checkpoints")[0]
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * offset_fraction)])
    with pytest.raises(CheckpointError, match="damaged"):
        load_payload(cut)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Evil(marker)}, evil)
    for args in (["inspect", str(evil)], ["eval", XOR, f"checkpoint={evil}", f"run.dir={tmp_path}"]):
        result = run_cli(*args, fresh=True)  # were it run, the code would run in a process of its own
        assert result.returncode == 2 and "was refused" in result.stderr and "posix.system" in result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_payload(evil)
    assert not marker.exists()


def test_rng_state_round_trips():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(pickle.loads(pickle.dumps(state)))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_inspect_prints_metadata_without_the_model(saved_run):
    result = run_cli("inspect", str(saved_run))
    assert result.returncode == 0
    assert "global_step: 60" in result.stdout and "world_size: 1" in result.stdout
    assert "test_accuracy" in result.stdout and "global_batch_size: 128" in result.stdout


def test_mid_epoch_resume_is_bitwise_exact(saved_run, tmp_path):
    # Resume from step 28 (epoch 1, step 8 of 20) in a new run dir: same final weights, bit for bit.
    mid = saved_run / "checkpoints" / "step-00000028.pt"
    assert load_payload(mid)["step_in_epoch"] == 8
    train(load_config(XOR, [f"run.dir={tmp_path}", *SHORT, f"checkpoint.resume={mid}"]), environ={})
    final = weights_at(saved_run / "checkpoints" / "step-00000060.pt")
    resumed = weights_at(tmp_path / "checkpoints" / "step-00000060.pt")
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_resume_refuses_another_global_batch(saved_run, tmp_path):
    mid = saved_run / "checkpoints" / "step-00000028.pt"
    result = run_cli(
        "train", XOR, f"run.dir={tmp_path}", *SHORT, f"checkpoint.resume={mid}", "data.global_batch_size=64"
    )
    assert result.returncode == 2 and "data.global_batch_size: 128 in the checkpoint, 64 now" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_resume_path_is_a_clear_error(tmp_path):
    result = run_cli("train", XOR, f"run.dir={tmp_path}", "checkpoint.resume=/nope/x.pt")
    assert result.returncode == 2 and "/nope/x.pt does not exist" in result.stderr


@pytest.mark.parametrize("kind", ["pt", "shards"])
def test_background_staging_keeps_its_buffers_and_copies_exactly(kind):
    from distrain.checkpoint.background import ShardStaging, Staging

    staging = Staging() if kind == "pt" else ShardStaging()
    live = {"model": {"w": torch.randn(4, 3)}, "state": {"m": torch.ones(2), "step": 3}}
    first = staging.stage(live)
    kept = first["model"]["w"].data_ptr()
    assert kept != live["model"]["w"].data_ptr() and torch.equal(first["model"]["w"], live["model"]["w"])
    live["model"]["w"].add_(1.0)  # training goes on: the staged copy does not change with it
    assert not torch.equal(first["model"]["w"], live["model"]["w"])
    second = staging.stage(live)
    assert second["model"]["w"].data_ptr() == kept and torch.equal(second["model"]["w"], live["model"]["w"])
    assert second["state"]["step"] == 3
    live["state"]["v"] = torch.zeros(2)  # the layout changed (a new state tensor): copied, not mixed up
    third = staging.stage(live)
    assert torch.equal(third["state"]["v"], live["state"]["v"]) and torch.equal(third["model"]["w"], live["model"]["w"])
