"""Two engines, every launcher: the same weights and metrics, accumulation, bf16, and checkpoints that
cross engines. Real `accelerate launch` and real torchrun, 2 gloo processes.

Tolerances: engines and launchers are compared bitwise (both run torch's DDP over the same batches in the
same order; measured equal). Accumulation of 4 micro-batches against one batch of 4x: 1e-5 (only float32
summation order differs). bf16 against float32: accuracy only (bf16 changes the trajectory).
"""

from pathlib import Path

import pytest
from helpers.runs import (
    PYTHON,
    REPO,
    XOR,
    clean_env,
    free_port,
    newest_payload,
    newest_weights,
    records,
    run_cli,
    run_group,
    run_torchrun,
)

from distrain.config.parse import load_config
from distrain.errors import ConfigError

pytestmark = pytest.mark.slow  # real launchers end to end (the fast subset skips them)

ACCELERATE = str(Path(PYTHON).parent / "accelerate")
# 8 epochs of 20 steps with momentum (optimizer state matters), saving mid-epoch and at epoch ends.
ARGS = [
    "trainer.epochs=8",
    "optim.args.momentum=0.9",
    "checkpoint.every_steps=7",
    "checkpoint.every_epochs=4",
    "checkpoint.keep_last=0",
    "log.plots=false",
]


def run_accelerate_launch(*args: str, config_file: str | None = None, nproc: int = 2):
    """`accelerate launch [--config_file F | --multi_gpu --num_processes N] -m distrain ARGS`."""
    how = ["--config_file", str(REPO / config_file)] if config_file else ["--multi_gpu", f"--num_processes={nproc}"]
    cmd = [ACCELERATE, "launch", *how, f"--main_process_port={free_port()}", "-m", "distrain", *args]
    return run_group(cmd, env=clean_env(), timeout=300)


def max_diff(a, b) -> float:
    assert list(a) == list(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def eval_metrics(run_dir: Path) -> list[tuple[float, float, int]]:
    """(loss, accuracy, samples) of every epoch's test evaluation."""
    return [(r["loss"], r["accuracy"], r["samples"]) for r in records(run_dir, "test")]


def launch(how: str, run_dir: Path, *extra: str):
    args = ("train", XOR, f"run.dir={run_dir}", *ARGS, *extra)
    if how == "torchrun":
        result = run_torchrun(2, *args)
    elif how == "accelerate-config":
        result = run_accelerate_launch(*args, config_file="launch/accelerate.yaml")
    elif how == "accelerate-flags":
        result = run_accelerate_launch(*args)
    else:
        result = run_cli(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """engine=native under torchrun, 2 processes: what every other combination must reproduce."""
    run = tmp_path_factory.mktemp("native-torchrun")
    launch("torchrun", run, "engine=native")
    return run


# engine=accelerate under torchrun: test_accelerate_engine_resumes_bitwise_after_a_worker_is_killed (the
# same run, with one worker killed and restarted on the way, ends bitwise equal to the reference too).
@pytest.mark.parametrize("engine,how", [("accelerate", "accelerate-config"), ("native", "accelerate-flags")])
def test_engines_and_launchers_train_bitwise_the_same(reference, tmp_path, engine, how):
    result = launch(how, tmp_path, f"engine={engine}")
    assert f"2 process(es) | device cpu | backend gloo | engine {engine}" in result.stdout
    assert max_diff(newest_weights(reference), newest_weights(tmp_path)) == 0.0
    assert eval_metrics(tmp_path) == eval_metrics(reference)  # exact: every test sample counted once
    assert newest_payload(tmp_path)["engine"] == engine


@pytest.mark.parametrize("engine,how", [("native", "torchrun"), ("accelerate", "accelerate-flags")])
def test_accumulating_4_micro_batches_matches_one_batch(reference, tmp_path, engine, how):
    launch(how, tmp_path, f"engine={engine}", "trainer.accumulate_steps=4")
    diff = max_diff(newest_weights(reference), newest_weights(tmp_path))
    assert diff <= 1e-5, diff
    for (loss_a, acc_a, n_a), (loss_b, acc_b, n_b) in zip(eval_metrics(reference), eval_metrics(tmp_path)):
        assert n_a == n_b and abs(acc_a - acc_b) <= 2 / n_a and loss_a == pytest.approx(loss_b, abs=1e-5)


@pytest.mark.parametrize("engine,how", [("native", "torchrun"), ("accelerate", "accelerate-flags")])
def test_bf16_with_accumulation_trains_through_both_engines(reference, tmp_path, engine, how):
    result = launch(how, tmp_path, f"engine={engine}", "trainer.precision=bf16", "trainer.accumulate_steps=2")
    final = eval_metrics(tmp_path)[-1]
    assert final[1] >= 0.98, final  # float32 reaches 1.0 on this set
    assert 0 < max_diff(newest_weights(reference), newest_weights(tmp_path)) < 0.1  # bf16 really ran: not bitwise fp32
    if engine == "accelerate":
        assert "mixed precision bf16" in result.stdout


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """engine=native in one process, all 8 epochs in one go."""
    run = tmp_path_factory.mktemp("native-single")
    launch("single", run, "engine=native")
    return run


@pytest.mark.parametrize("first,second", [("native", "accelerate"), ("accelerate", "native")])
def test_a_checkpoint_of_one_engine_resumes_in_the_other(whole, tmp_path, first, second):
    """One process: 4 epochs with one engine, then on to 8 with the other, against 8 in one go."""
    split = tmp_path / "split"
    launch("single", split, f"engine={first}", "trainer.epochs=4")
    result = launch("single", split, f"engine={second}")
    assert f"checkpoint written by engine {first}, resuming with engine {second}" in result.stdout
    assert max_diff(newest_weights(whole), newest_weights(split)) == 0.0
    assert eval_metrics(split) == eval_metrics(whole)


def test_accelerate_engine_resumes_bitwise_after_a_worker_is_killed(reference, tmp_path):
    env = clean_env(KILL_STEP="33", KILL_RANK="1")
    result = run_torchrun(
        2,
        "train",
        XOR,
        f"run.dir={tmp_path}",
        *ARGS,
        "engine=accelerate",
        extra=("--max-restarts=1",),
        script="tests/helpers/kill_at_step.py",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(exitcode: -9)" in result.stderr
    assert "2 process(es) | device cpu | backend gloo | engine accelerate" in result.stdout
    assert max_diff(newest_weights(reference), newest_weights(tmp_path)) == 0.0
    assert eval_metrics(tmp_path) == eval_metrics(reference)
    assert newest_payload(tmp_path)["engine"] == "accelerate"


def test_sharded_accelerate_plugins_are_refused_while_checkpoints_are_on():
    from distrain.strategies.accelerate import check_plugin

    cfg = load_config(XOR)
    with pytest.raises(ConfigError, match="FSDP, whose optimizer state is sharded"):
        check_plugin("FSDP", cfg.checkpoint)
    off = load_config(XOR, ["checkpoint.every_epochs=0", "checkpoint.resume=never"])
    check_plugin("FSDP", off.checkpoint)  # no checkpoints: allowed
    check_plugin("MULTI_CPU", cfg.checkpoint)


def test_unknown_engine_is_a_config_error(tmp_path):
    result = run_cli("train", XOR, f"run.dir={tmp_path}", "engine=deepspeed")
    assert result.returncode == 2
    assert "config key 'engine'" in result.stderr and "Traceback" not in result.stderr
