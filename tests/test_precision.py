"""Gradient accumulation, mixed precision and DDP settings; `distrain --help` imports no torch."""

import subprocess

import pytest
import torch
from helpers.runs import (
    PYTHON,
    REPO,
    XOR,
    clean_env,
    last_record,
    newest_payload,
    newest_weights,
    run_cli,
    run_torchrun,
)

from distrain.config.parse import load_config
from distrain.loop.trainer import train

QUIET = ["wandb.mode=disabled", "log.plots=false"]


def test_accumulating_micro_batches_matches_one_big_batch(tmp_path):
    # 4 micro-batches of 32 against one batch of 128: the same gradient up to float32 summation order.
    for name, steps in (("one", 1), ("four", 4)):
        train(
            load_config(
                XOR,
                [
                    f"run.dir={tmp_path / name}",
                    "trainer.epochs=5",
                    "optim.args.momentum=0.9",
                    f"trainer.accumulate_steps={steps}",
                    *QUIET,
                ],
            ),
            environ={},
        )
    a, b = newest_weights(tmp_path / "one"), newest_weights(tmp_path / "four")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.xdist_group("xor10")
def test_accumulation_and_ddp_settings_under_torchrun(tmp_path, xor10_torchrun):
    base = ["train", XOR, "trainer.epochs=10", *QUIET]  # plain: xor10_torchrun, the same 10 epochs
    tuned = run_torchrun(
        2,
        *base,
        f"run.dir={tmp_path / 'tuned'}",
        "trainer.accumulate_steps=2",
        "ddp.bucket_cap_mb=1",
        "ddp.gradient_as_bucket_view=false",
    )
    static = run_torchrun(2, *base, f"run.dir={tmp_path / 'static'}", "ddp.static_graph=true")
    assert tuned.returncode == 0 and static.returncode == 0, tuned.stderr[-2000:] + static.stderr[-2000:]
    a, b, c = newest_weights(xor10_torchrun), newest_weights(tmp_path / "tuned"), newest_weights(tmp_path / "static")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
        assert torch.equal(a[key], c[key])  # a static graph changes bookkeeping, not arithmetic


def test_static_graph_with_accumulation_is_refused(tmp_path):
    result = run_cli("train", XOR, f"run.dir={tmp_path}", "ddp.static_graph=true", "trainer.accumulate_steps=2")
    assert result.returncode == 2 and "'ddp.static_graph': cannot be combined" in result.stderr


def test_bf16_autocast_on_cpu_trains_and_really_runs_in_bf16(tmp_path):
    for name, precision in (("fp32", "32"), ("bf16", "bf16")):
        train(load_config(XOR, [f"run.dir={tmp_path / name}", f"trainer.precision={precision}", *QUIET]), environ={})
    last = last_record(tmp_path / "bf16", "test")
    assert last["accuracy"] == 1.0
    a, b = newest_weights(tmp_path / "fp32"), newest_weights(tmp_path / "bf16")
    diffs = [(a[k] - b[k]).abs().max().item() for k in a]
    assert max(diffs) > 1e-4  # bf16 forward passes really happened...
    assert all(b[k].dtype == torch.float32 for k in b)  # ...while weights stay float32


def test_fp16_on_cpu_trains_with_its_gradient_scaler_in_the_checkpoint(tmp_path):
    train(load_config(XOR, [f"run.dir={tmp_path}", "trainer.precision=fp16", *QUIET]), environ={})
    assert last_record(tmp_path, "test")["accuracy"] == 1.0
    scaler = newest_payload(tmp_path)["scaler"]
    assert scaler is not None and scaler["scale"] == 2.0 * 65536  # 2,000 steps without an overflow: doubled once


def test_fp16_on_cpu_with_accelerate_is_a_clear_config_error(tmp_path):
    result = run_cli("train", XOR, f"run.dir={tmp_path}", "trainer.precision=fp16", "engine=accelerate")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'trainer.precision': fp16 needs a CUDA device with engine accelerate" in result.stderr


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom distrain.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from distrain.config.parse import load_config\nload_config('configs/xor.yaml')\n"
        "assert 'torch' not in sys.modules, 'config loading imported torch'\nprint('ok')"
    )
    result = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
