"""Ray Train for real: the shipped launch/ray_train.py on a local Ray (ray.init in the script, 2 CPU
workers): distrain.fit runs in Ray's worker threads with Ray's process group, its run directory is Ray's
experiment directory, and it ends with bitwise the weights of `torchrun --nproc_per_node=2`; each epoch's
figures reach ray.train.report; a worker SIGKILLed mid-run under FailureConfig(max_failures=1) makes Ray
restart the worker group, which resumes from distrain's newest checkpoint and ends bitwise equal too.

Needs `ray[train]` (the test extra installs it; CI runs these tests).
"""

import ast
import json

import pytest
from helpers.runs import PYTHON, REPO, assert_bitwise, clean_env, last_record, newest_weights, records, run_group

pytest.importorskip("ray.train.torch")  # a safety net: the test extra installs ray[train]


ARGS = ["trainer.epochs=10", "log.plots=false"]  # xor10_torchrun's


def run_ray_train(tmp_path, *overrides, max_failures=1):
    env = clean_env(
        RAY_WORKERS="2",
        RAY_STORAGE=str(tmp_path / "storage"),
        RAY_NAME="xor",
        RAY_MAX_FAILURES=str(max_failures),
        RAY_ADDRESS="local",
        # The workers import this checkout's distrain (and the tests' helpers, for the kill).
        PYTHONPATH=f"{REPO}:{REPO / 'tests'}",
        RAY_DISABLE_DOCKER_CPU_WARNING="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_num_prestart_python_workers="0",
    )
    cmd = [PYTHON, "launch/ray_train.py", "xor", *ARGS, *overrides]
    result = run_group(cmd, env=env, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    # configs/xor.yaml's run.dir (runs/xor) is relative: under Ray it lands in Ray's experiment directory.
    return tmp_path / "storage" / "xor" / "runs" / "xor", result.stdout + result.stderr


def reported(output: str) -> list[dict]:
    return [
        ast.literal_eval(line.split("ray_train: reported ", 1)[1])
        for line in output.splitlines()
        if "ray_train: reported " in line
    ]


@pytest.mark.parametrize(
    "run_dir,expected",
    [(None, "/storage/xor"), ("runs/xor", "/storage/xor/runs/xor"), ("/shared/runs/xor", "/shared/runs/xor")],
)
def test_the_run_directory_under_ray_is_in_rays_experiment_directory(monkeypatch, run_dir, expected):
    """Unset or relative run.dir: in Ray's experiment directory (the workers' own folder is temporary)."""
    import dataclasses

    from distrain.config.parse import load_config
    from distrain.launch import ray_train
    from distrain.launch.env import detect
    from distrain.loop.trainer import with_run_dir

    monkeypatch.setattr(ray_train, "storage_run_dir", lambda: "/storage/xor")
    cfg = load_config(str(REPO / "configs" / "xor.yaml"), [])
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=run_dir))
    env = detect({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RAY_RAYLET_PID": "1"})
    assert with_run_dir(cfg, {}, env).run.dir == expected


@pytest.mark.slow
@pytest.mark.xdist_group("xor10")
def test_fit_inside_torch_trainer_equals_torchrun_and_reports_to_ray(tmp_path, xor10_torchrun):
    run_dir, output = run_ray_train(tmp_path)
    assert "| ray | 2 process(es)" in output  # the header names Ray's launch, not torchrun
    assert "signal only works in main thread" not in output
    assert_bitwise(newest_weights(run_dir), newest_weights(xor10_torchrun))
    # Every epoch's figures reached ray.train.report: the same as the run's own metrics.jsonl.
    got = reported(output)
    assert [r["epoch"] for r in got] == list(range(1, 11)), got
    assert got[-1]["test_loss"] == last_record(run_dir, "test")["loss"]
    assert len(records(run_dir, "test")) == 10


@pytest.mark.slow
@pytest.mark.xdist_group("xor10")
def test_a_killed_worker_is_restarted_by_ray_and_resumes_bitwise(tmp_path, xor10_torchrun):
    marker = tmp_path / "killed"
    kill = f"callbacks=[{{name: 'helpers.kill_callback:KillOnce', args: {{step: 130, rank: 1, marker: '{marker}'}}}}]"
    run_dir, output = run_ray_train(tmp_path, "checkpoint.every_epochs=2", kill)
    assert marker.exists(), "the worker was not killed"
    assert "resum" in output.lower(), output[-3000:]
    assert_bitwise(newest_weights(run_dir), newest_weights(xor10_torchrun))
    json.dumps(reported(output))  # the restarted group reported too
    assert reported(output)[-1]["epoch"] == 10
