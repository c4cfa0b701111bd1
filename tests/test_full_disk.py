"""A full disk during a save: a clear error (exit 2, the path and the cause), the previous checkpoint intact,
no temporary or half-written file, and a rerun with space resumes exactly. Uses a small real tmpfs as
run.dir (needs root and mount; skipped with the reason otherwise)."""

import os
import subprocess

import pytest
import torch
from helpers.runs import XOR, assert_checkpoints_verify, newest_weights, records, run_cli

ARGS = ["trainer.epochs=30", "checkpoint.every_epochs=1", "checkpoint.keep_last=0", "wandb.mode=disabled"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # three CLI runs end to end
def test_disk_full_during_a_save_loses_nothing_and_a_rerun_resumes_exactly(small_disk, tmp_path):
    run_dir = small_disk / "run"
    full = run_cli("train", XOR, f"run.dir={run_dir}", *ARGS)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    assert f"cannot write {run_dir}" in full.stderr and "No space left on device" in full.stderr
    # Every checkpoint left verifies; nothing temporary is left behind; metrics.jsonl ends on a whole line.
    assert_checkpoints_verify(run_dir)
    assert not [p.name for p in run_dir.rglob("*") if ".tmp-" in p.name]
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    epochs = {r["epoch"] for r in records(run_dir)}
    assert max(epochs) < 29

    # With space again the same command resumes from the newest good checkpoint and ends like a run that
    # never stopped.
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    again = run_cli("train", XOR, f"run.dir={run_dir}", *ARGS)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout
    reference = run_cli("train", XOR, f"run.dir={tmp_path / 'ref'}", *ARGS)
    assert reference.returncode == 0, reference.stderr
    resumed, whole = newest_weights(run_dir), newest_weights(tmp_path / "ref")
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert sorted((r["epoch"], r["split"]) for r in records(run_dir)) == sorted(
        (e, s) for e in range(30) for s in ("train", "test")
    )
