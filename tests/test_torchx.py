"""TorchX for real: the shipped launch/torchx.sh on TorchX's local scheduler (`torchx run -s local_cwd
dist.ddp -j 1x2 -m distrain -- train xor ...`) trains to bitwise the weights of `torchrun --nproc_per_node=2`
(the run also has a worker SIGKILLed mid-run: the job fails, and the same command again resumes from the
newest checkpoint). The two-node form, as TorchX's Kubernetes scheduler runs it, is in test_kubernetes.py.

Needs torchx (the test extra installs it; CI runs this test).
"""

import os
from pathlib import Path

import pytest
from helpers.runs import PYTHON, REPO, assert_bitwise, clean_env, newest_weights, records, run_group

pytest.importorskip("torchx")  # a safety net: the test extra installs torchx

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("xor10")]


def test_torchx_local_trains_and_resumes_bitwise(tmp_path, xor10_torchrun):
    run_dir, marker = tmp_path / "run", tmp_path / "killed"
    kill = f"callbacks=[{{name: 'helpers.kill_callback:KillOnce', args: {{step: 130, rank: 1, marker: '{marker}'}}}}]"
    args = ["local_cwd", "1x2", "xor", f"run.dir={run_dir}", "trainer.epochs=10", "log.plots=false"]
    args += ["checkpoint.every_epochs=2", kill]
    env = clean_env(PATH=f"{Path(PYTHON).parent}:{os.environ['PATH']}", PYTHONPATH=f"{REPO}:{REPO / 'tests'}")
    first = run_group(["bash", "launch/torchx.sh", *args], env=env, timeout=300)
    assert marker.exists() and first.returncode != 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "torchrun on torchx | 2 process(es)" in first.stdout + first.stderr
    again = run_group(["bash", "launch/torchx.sh", *args], env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resum" in (again.stdout + again.stderr).lower()
    assert_bitwise(newest_weights(run_dir), newest_weights(xor10_torchrun))
    assert [r["epoch"] for r in records(run_dir, "test")] == list(range(10))
