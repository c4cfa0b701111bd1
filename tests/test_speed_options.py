"""Speed options change the speed, not the results: torch.compile, channels_last, the synthetic data set
of the benchmark, and the benchmark command itself (its figures are not asserted: timings live in bench/)."""

import subprocess

import pytest
import torch
from helpers.runs import PYTHON, REPO, XOR, clean_env, newest_weights, records, run_cli

QUIET = ["wandb.mode=disabled", "log.plots=false"]


def train(run_dir, config, *overrides):
    result = run_cli("train", config, f"run.dir={run_dir}", *QUIET, *overrides, timeout=600, fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return newest_weights(run_dir)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one_and_saves_plain_keys(tmp_path):
    eager = train(tmp_path / "eager", XOR, "trainer.epochs=2")
    compiled = train(tmp_path / "compiled", XOR, "trainer.epochs=2", "trainer.compile=true")
    assert list(compiled) == list(eager)  # no "_orig_mod." prefixes: the checkpoint loads into a plain model
    for key in eager:  # inductor may fuse and reorder float32 arithmetic: close, not bitwise
        torch.testing.assert_close(compiled[key], eager[key], rtol=0, atol=1e-5)


def test_channels_last_trains_like_contiguous(tmp_path):
    args = (
        "bench/configs/cnn.yaml",
        "data.args.num_train=512",
        "data.args.num_test=128",
        "trainer.epochs=1",
        "checkpoint.every_epochs=1",
    )
    plain = train(tmp_path / "plain", *args)
    last = train(tmp_path / "last", *args, "trainer.channels_last=true")
    for key in plain:  # other convolution kernels: float32 rounding differs
        torch.testing.assert_close(last[key], plain[key], rtol=0, atol=1e-4)
    acc = [r["accuracy"] for run in ("plain", "last") for r in records(tmp_path / run, "test")]
    assert abs(acc[0] - acc[1]) <= 2 / 128


def test_synthetic_images_have_the_configured_shapes(tmp_path):
    weights = train(
        tmp_path,
        "bench/configs/resnet18.yaml",
        "data.args.num_train=64",
        "data.args.num_test=40",
        "data.args.sample_shape=[3,16,16]",
        "data.args.num_classes=5",
        "checkpoint.every_epochs=1",
    )
    assert weights["fc.weight"].shape == (5, 512)
    assert [(r["split"], r["samples"]) for r in records(tmp_path)] == [("train", 64), ("test", 40)]


@pytest.mark.slow
def test_bench_command_prints_every_workload_and_ratio(tmp_path):
    cmd = [
        PYTHON,
        "bench/run.py",
        "--workloads",
        "xor",
        "--variants",
        "floor,tutorial,distrain,distrain_api",
        "--repeats",
        "1",
        "--startup-repeats",
        "1",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in (
        "xor: 400000 samples per run",
        "distrain = ",
        "x tutorial",
        "distrain_api (distrain.fit with a user nn.Module) = ",
        "start-up: whole process",
    ):
        assert line in out, out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["distrain"] and "=" not in line]
    # one throughput row (samples/s, x floor) and one start-up row (seconds)
    assert len(rows) == 2 and float(rows[0][1].replace(",", "")) > 0 and float(rows[0][2]) > 0, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_gpu_mode_is_refused_without_cuda():
    result = subprocess.run(
        [PYTHON, "bench/run.py", "--device", "cuda"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "CUDA is not available" in result.stderr


def test_bench_parts_prints_each_part():
    result = subprocess.run(
        [PYTHON, "bench/parts.py", "--rounds", "1"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"zero_grad", "targets", "meter", "shuffle"}, result.stdout
    assert all("us per step" in rows[name] for name in ("zero_grad", "targets", "meter"))
    assert "ms per epoch of 1563 steps" in rows["shuffle"]


def test_the_bench_summary_has_no_empty_ratio_line(capsys):
    # A workload that no peer ran (Lightning, Accelerate, the tutorial loop) has nothing to compare distrain
    # with: no `distrain = ` line, rather than an empty one.
    import types

    from bench.run import print_table

    w = types.SimpleNamespace(samples=100, batch=8, threads=1)
    alone = {"floor": [1.0], "distrain": [0.9]}
    print_table("alone", w, {"floor": 1.0, "distrain": 0.9}, alone, alone)
    assert "distrain =" not in capsys.readouterr().out
    peer = {**alone, "tutorial": [0.8]}
    print_table("peer", w, {"floor": 1.0, "distrain": 0.9, "tutorial": 0.8}, peer, peer)
    assert "  distrain = 1.12x tutorial\n" in capsys.readouterr().out
