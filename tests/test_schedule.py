"""LR schedules: the factor curve, and exact resume of a scheduled run."""

import pytest
import torch
from helpers.runs import XOR, records

from distrain.checkpoint.store import load_payload
from distrain.config.parse import load_config
from distrain.config.schema import ScheduleConfig
from distrain.loop.schedule import lr_factor
from distrain.loop.trainer import train


def factor(step, **kw):
    return lr_factor(step, ScheduleConfig(**kw), base_lr=0.1, steps_per_epoch=10, total_steps=100)


def test_warmup_is_linear_from_the_start_factor():
    assert [factor(s, warmup_steps=4, warmup_start_factor=0.2) for s in range(6)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    )


def test_step_decays_every_step_epochs():
    assert [factor(s, name="step", step_epochs=2, gamma=0.5) for s in (0, 19, 20, 39, 40)] == pytest.approx(
        [1, 1, 0.5, 0.5, 0.25]
    )


def test_cosine_goes_from_lr_to_min_lr():
    assert factor(0, name="cosine", min_lr=0.01) == pytest.approx(1.0)
    assert factor(50, name="cosine", min_lr=0.01) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(100, name="cosine", min_lr=0.01) == pytest.approx(0.1)
    assert factor(10, name="cosine", warmup_steps=10) == pytest.approx(1.0)  # decay starts after warm-up


def test_lr_is_logged_and_a_scheduled_run_resumes_exactly(tmp_path):
    args = [
        "trainer.epochs=4",
        "schedule.name=cosine",
        "schedule.warmup_steps=15",
        "schedule.min_lr=0.001",
        "optim.name=adam",
        "optim.lr=0.01",
        "checkpoint.every_steps=9",
        "checkpoint.keep_last=0",
    ]
    train(load_config(XOR, [f"run.dir={tmp_path / 'full'}", *args]), environ={})
    lrs = [r["lr"] for r in records(tmp_path / "full", "train")]
    expected = [
        0.01 * lr_factor(20 * e, load_config(XOR, args).schedule, base_lr=0.01, steps_per_epoch=20, total_steps=80)
        for e in range(4)
    ]
    assert lrs == pytest.approx(expected)
    mid = tmp_path / "full" / "checkpoints" / "step-00000027.pt"
    assert load_payload(mid)["scheduler"]["last_epoch"] == 27
    train(load_config(XOR, [f"run.dir={tmp_path / 'resumed'}", *args, f"checkpoint.resume={mid}"]), environ={})
    a = load_payload(tmp_path / "full" / "checkpoints" / "step-00000080.pt")
    b = load_payload(tmp_path / "resumed" / "checkpoints" / "step-00000080.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"] == b["scheduler"]
