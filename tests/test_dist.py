"""Collective helpers: no-ops in one process, real collectives in a 2-process gloo group."""

import json
from pathlib import Path

import torch
from helpers.runs import XOR, free_port, spawn

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


# What gloo raised here (torch 2.14) when a peer died, or stopped answering, in the middle of a collective.
GLOO_CLOSED = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
    "[127.0.0.1]:2468. This is typically caused by a remote worker crashing. Check the logs of the remote "
    "worker before reporting an error. GLHF!"
)
GLOO_RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:47310: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)
GLOO_TIMEOUT = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
    "3000ms for recv operation to complete"
)


def test_a_lost_peer_is_told_from_a_bug():
    assert dist.peer_gone(RuntimeError(GLOO_CLOSED), rank=0, world_size=2) == (
        "rank 1 (Connection closed by peer [127.0.0.1]:2468)"
    )
    assert dist.peer_gone(RuntimeError(GLOO_RESET), rank=1, world_size=2) == (
        "rank 0 (Read error [127.0.0.1]:47310: Connection reset by peer)"
    )
    # With more ranks gloo names only the peer's address; a timeout names nobody.
    assert dist.peer_gone(RuntimeError(GLOO_TIMEOUT), rank=2, world_size=4) == (
        "a peer (Timed out waiting 3000ms for recv operation to complete)"
    )
    wrapped = ValueError("while saving")
    wrapped.__cause__ = RuntimeError(GLOO_CLOSED)
    assert dist.peer_gone(wrapped, rank=0, world_size=2).startswith("rank 1 (Connection closed")
    # Bugs keep their traceback: other errors, and one raised while handling a lost peer.
    assert dist.peer_gone(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), rank=0, world_size=2) is None
    assert dist.peer_gone(KeyError("Connection closed by peer"), rank=0, world_size=2) is None
    try:
        try:
            raise RuntimeError(GLOO_CLOSED)
        except RuntimeError:
            raise AttributeError("'NoneType' object has no attribute 'close'")  # noqa: B904
    except AttributeError as bug:
        assert dist.peer_gone(bug, rank=0, world_size=2) is None


def test_a_lost_peer_is_reported_by_every_rank_with_its_rank(capsys, monkeypatch):
    from distrain.errors import LostPeer, report_user_error

    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        report_user_error(LostPeer("lost rank 9 (Connection closed by peer [h]:1)"))
    assert capsys.readouterr().err.splitlines() == [
        "[rank 0] distrain: error: lost rank 9 (Connection closed by peer [h]:1)",
        "[rank 1] distrain: error: lost rank 9 (Connection closed by peer [h]:1)",
    ]


def _gloo_threads() -> list[str]:
    """This process's gloo threads (the group's workers and its transport loop), by their OS names."""
    tasks = Path("/proc/self/task")
    return sorted(n for t in tasks.iterdir() if "gloo" in (n := (t / "comm").read_text().strip()))


def _train_cycles(rank, world, port, out, ports):
    """Train XOR with background saves once per port, ending alternately normally and by SIGTERM (raised
    by rank 0 after step 7), in this one process; record what is left after each."""
    import signal
    import threading

    import distrain.loop.trainer
    from distrain.config.parse import load_config
    from distrain.launch.signals import Interrupted
    from distrain.loop.trainer import train

    original, signal_at = distrain.loop.trainer.Trainer.maybe_save_step, [None]

    def maybe_save_then_signal(self):
        saved = original(self)
        if rank == 0 and self.state.progress.global_step == signal_at[0]:
            signal.raise_signal(signal.SIGTERM)
        return saved

    distrain.loop.trainer.Trainer.maybe_save_step = maybe_save_then_signal
    left = []
    for cycle, cycle_port in enumerate(ports):
        signal_at[0] = 7 if cycle % 2 else None
        cfg = load_config(
            XOR,
            [
                f"run.dir={out / f'cycle{cycle}'}",
                "trainer.epochs=2",
                "checkpoint.every_steps=5",
                "checkpoint.async_save=true",
                "wandb.mode=disabled",
                "log.plots=false",
            ],
        )
        environ = {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(cycle_port),
        }
        try:
            train(cfg, environ=environ)
            ended = "normally"
        except Interrupted as exc:
            ended = exc.signum
        left.append([ended, _gloo_threads(), [t.name for t in threading.enumerate()]])
    (out / f"rank{rank}.json").write_text(json.dumps(left))


def test_repeated_runs_with_background_saves_leave_no_gloo_thread_behind(tmp_path):
    # The path of the SIGABRT at exit seen once in CI ("terminate called without an active exception"):
    # a group that outlived destroy_process_group (torch.distributed.nn.functional held it) kept its gloo
    # threads running into interpreter teardown. 20 runs per process, half ended by SIGTERM; after each,
    # no gloo thread and no Python thread but the main one; then each process exits normally.
    ports = [free_port() for _ in range(20)]
    spawn(_train_cycles, 2, tmp_path, ports)  # raises if a process does not exit 0 (a crash at exit too)
    for rank in range(2):
        left = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [ended for ended, _, _ in left] == ["normally", 15] * 10
        assert all(gloo == [] and python == ["MainThread"] for _, gloo, python in left), left


def test_an_existing_group_is_used_as_is_and_must_match_the_launcher():
    """Ray Train (or the user's script) initialised the group: distrain uses it, refuses a launcher that
    describes another shape, and never destroys it."""
    import pytest
    import torch.distributed as tdist

    from distrain.errors import EnvError

    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        assert dist.adopt_existing_group(DistEnv(source="single")) == DistEnv(source="single")
        with pytest.raises(EnvError) as info:
            dist.adopt_existing_group(DistEnv("ray", 0, 0, 2, 2, 0, "a", 1))
        assert info.value.variable == "WORLD_SIZE" and "already initialised" in str(info.value)
        with dist.distributed(DistEnv(source="single"), device="cpu"):
            pass
        assert tdist.is_initialized()  # left for its owner
    finally:
        tdist.destroy_process_group()
