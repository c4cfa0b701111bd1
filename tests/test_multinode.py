"""Multi-node without a second machine: two torchrun agents on this machine, joined by c10d rendezvous
(--nnodes=2), each with its own node rank, as launch/torchrun_multinode.sh starts them on two nodes."""

import subprocess

import pytest
import torch

from conftest import REPO, clean_env, free_port, run_torchrun
from distrain.checkpoint import find_resumable, load_payload

pytestmark = pytest.mark.slow  # real launchers end to end (the fast subset skips them)

XOR = "configs/xor.yaml"


def test_two_agents_with_nnodes_2_match_one_agent(tmp_path):
    args = ["configs/xor.yaml", "trainer.epochs=10"]
    endpoint = f"127.0.0.1:{free_port()}"
    agents = []
    for node_rank in (0, 1):
        # The shipped launcher script, exactly as a user runs it on each node.
        cmd = ["bash", "launch/torchrun_multinode.sh", "2", str(node_rank), "1", endpoint, *args,
               f"run.dir={tmp_path / 'two_nodes'}"]
        env = clean_env(PATH=f"{REPO / '.venv' / 'bin'}:{clean_env()['PATH']}", RDZV_ID=f"test-{endpoint}")
        agents.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True))
    outputs = [agent.communicate(timeout=300) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    # Both agents took part: global rank 0 logged a 2-process run, and each agent ran one worker.
    assert sum("| torchrun | 2 process(es)" in out for out, _ in outputs) == 1
    one = run_torchrun(2, "train", *args, f"run.dir={tmp_path / 'one_node'}")
    assert one.returncode == 0, one.stderr
    a = load_payload(find_resumable(tmp_path / "two_nodes"))["model"]
    b = load_payload(find_resumable(tmp_path / "one_node"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

