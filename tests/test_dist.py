"""Collective helpers: no-ops in one process, real collectives in a 2-process gloo group."""

import json

import torch
from helpers.runs import spawn

from distrain.launch import dist
from distrain.launch.env import DistEnv


def test_helpers_are_no_ops_in_one_process():
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    dist.barrier()
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.all_gather_object(5) == [5]
    assert dist.all_true(False, torch.device("cpu")) is False
    with dist.distributed(DistEnv(source="single")) as ctx:
        assert ctx.backend is None and ctx.world_size == 1 and not torch.distributed.is_initialized()


def _collectives(rank, world, port, out):
    env = DistEnv("slurm", rank, rank, world, world, 0, "127.0.0.1", port)
    with dist.distributed(env, backend="auto", timeout_s=60) as ctx:
        assert ctx.backend == "gloo" and torch.distributed.is_initialized()
        total = dist.all_reduce_sum(torch.tensor([rank + 1.0]))
        obj = dist.broadcast_object({"from": rank})
        gathered = dist.all_gather_object(rank * 10)
        all_true = dist.all_true(rank == 0, ctx.device)
        any_true = dist.any_true(rank == 0, ctx.device)
        dist.barrier()
    result = {
        "sum": total.item(),
        "obj": obj,
        "gathered": gathered,
        "all": all_true,
        "any": any_true,
        "destroyed": not torch.distributed.is_initialized(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def test_collectives_in_a_real_two_process_group(tmp_path):
    spawn(_collectives, 2, tmp_path)
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r == {"sum": 3.0, "obj": {"from": 0}, "gathered": [0, 10], "all": False, "any": True, "destroyed": True}


def _raises_inside(rank, world, port, out):
    env = DistEnv("slurm", rank, rank, world, world, 0, "127.0.0.1", port)
    try:
        with dist.distributed(env, timeout_s=60):
            raise RuntimeError("boom")
    except RuntimeError:
        (out / f"rank{rank}").write_text(str(torch.distributed.is_initialized()))


def test_group_is_destroyed_when_the_body_raises(tmp_path):
    spawn(_raises_inside, 2, tmp_path)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["False", "False"]
