"""Checkpoint files: atomic verified saves, damaged files skipped, code-carrying files refused, RNG state; a
step saved again stays resumable however the save is killed; checkpoint.resume=never moves old ones aside."""

import contextlib
import os
import pickle
import random
import resource
import sys
import threading
import time

import numpy as np
import pytest
import torch
from helpers.runs import XOR, assert_checkpoints_verify, run_cli, weights_at

from distrain.checkpoint.files import CheckpointError, Manifest
from distrain.checkpoint.resume import maybe_resume
from distrain.checkpoint.store import (
    capture_rng,
    find_resumable,
    list_best,
    list_checkpoints,
    load_payload,
    restore_rng,
    save_checkpoint,
    set_aside,
)
from distrain.config.parse import load_config
from distrain.errors import UserError
from distrain.launch.dist import DistContext
from distrain.launch.env import detect
from distrain.loop.trainer import train

SHORT = [
    "trainer.epochs=3",
    "checkpoint.every_steps=7",
    "checkpoint.every_epochs=1",
    "checkpoint.keep_last=0",
    "optim.args.momentum=0.9",
]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(load_config(XOR, [f"run.dir={run}", *SHORT]), environ={})
    return run


def test_saves_are_complete_and_verified(saved_run):
    folder = saved_run / "checkpoints"
    steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(folder)]
    assert steps == sorted({*range(7, 61, 7), 20, 40, 60}, reverse=True)
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]  # no temporary files left behind
    for path in assert_checkpoints_verify(saved_run):
        manifest = Manifest.read(path)
        payload = load_payload(path)
        assert payload["global_step"] == manifest.global_step
        assert set(payload) >= {
            "model",
            "optimizer",
            "epoch",
            "step_in_epoch",
            "global_step",
            "rng",
            "world_size",
            "config",
            "distrain_version",
            "torch_version",
            "epoch_totals",
        }
    assert (folder / "latest.json").read_text() == '{"file": "step-00000060.pt"}'


def test_keep_last_prunes_old_checkpoints(tmp_path):
    train(
        load_config(
            XOR,
            [
                f"run.dir={tmp_path}",
                "trainer.epochs=2",
                "checkpoint.every_steps=5",
                "checkpoint.every_epochs=1",
                "checkpoint.keep_last=2",
            ],
        ),
        environ={},
    )
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000040.pt", "step-00000035.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.json")) == [
        "latest.json",
        "step-00000035.json",
        "step-00000040.json",
    ]


def test_a_step_save_that_ends_an_epoch_is_written_once_with_the_epoch_metrics(tmp_path, capsys):
    train(
        load_config(
            XOR,
            [
                f"run.dir={tmp_path}",
                "trainer.epochs=2",
                "checkpoint.every_steps=5",
                "checkpoint.every_epochs=1",
                "checkpoint.keep_last=0",
            ],
        ),
        environ={},
    )
    saved = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("saved ")]
    assert [os.path.basename(p) for p in saved] == [f"step-{s:08d}.pt" for s in range(5, 41, 5)]  # each once
    for step in (20, 40):  # 20 steps an epoch: the epoch's save, carrying its metrics
        metrics = Manifest.read(tmp_path / "checkpoints" / f"step-{step:08d}.pt").metrics
        assert {"train_loss", "test_loss", "test_accuracy"} <= set(metrics)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "no_manifest"])
def test_damaged_newest_checkpoint_is_skipped(saved_run, tmp_path, damage, caplog):
    run = tmp_path / "run"
    os.system(f"cp -r {saved_run} {run}")
    newest, previous = list_checkpoints(run / "checkpoints")[:2]
    data = newest.read_bytes()
    rng = random.Random(damage)
    if damage == "truncate":
        newest.write_bytes(data[: rng.randrange(1, len(data))])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(len(data)))
    elif damage == "flip":  # same size, one byte changed in the middle: only the checksum sees it
        i = len(data) // 2
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    else:  # the save was killed after the rename and before the manifest
        newest.with_suffix(".json").unlink()
    with caplog.at_level("WARNING"):
        assert find_resumable(run) == previous
    assert newest.name in caplog.text and "skipping" in caplog.text


@pytest.mark.parametrize("offset_fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_files_never_load(saved_run, tmp_path, offset_fraction):
    path = list_checkpoints(saved_run / "checkpoints")[0]
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * offset_fraction)])
    with pytest.raises(CheckpointError, match="damaged"):
        load_payload(cut)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Evil(marker)}, evil)
    for args in (["inspect", str(evil)], ["eval", XOR, f"checkpoint={evil}", f"run.dir={tmp_path}"]):
        result = run_cli(*args, fresh=True)  # were it run, the code would run in a process of its own
        assert result.returncode == 2 and "was refused" in result.stderr and "posix.system" in result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_payload(evil)
    assert not marker.exists()


def test_rng_state_round_trips():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(pickle.loads(pickle.dumps(state)))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_inspect_prints_metadata_without_the_model(saved_run):
    result = run_cli("inspect", str(saved_run))
    assert result.returncode == 0
    assert "global_step: 60" in result.stdout and "world_size: 1" in result.stdout
    assert "test_accuracy" in result.stdout and "global_batch_size: 128" in result.stdout


def test_mid_epoch_resume_is_bitwise_exact(saved_run, tmp_path):
    # Resume from step 28 (epoch 1, step 8 of 20) in a new run dir: same final weights, bit for bit.
    mid = saved_run / "checkpoints" / "step-00000028.pt"
    assert load_payload(mid)["step_in_epoch"] == 8
    train(load_config(XOR, [f"run.dir={tmp_path}", *SHORT, f"checkpoint.resume={mid}"]), environ={})
    final = weights_at(saved_run / "checkpoints" / "step-00000060.pt")
    resumed = weights_at(tmp_path / "checkpoints" / "step-00000060.pt")
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_resume_refuses_another_global_batch(saved_run, tmp_path):
    mid = saved_run / "checkpoints" / "step-00000028.pt"
    result = run_cli(
        "train", XOR, f"run.dir={tmp_path}", *SHORT, f"checkpoint.resume={mid}", "data.global_batch_size=64"
    )
    assert result.returncode == 2 and "data.global_batch_size: 128 in the checkpoint, 64 now" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_resume_path_is_a_clear_error(tmp_path):
    result = run_cli("train", XOR, f"run.dir={tmp_path}", "checkpoint.resume=/nope/x.pt")
    assert result.returncode == 2 and "/nope/x.pt does not exist" in result.stderr


@pytest.mark.parametrize("kind", ["pt", "shards"])
def test_background_staging_keeps_its_buffers_and_copies_exactly(kind):
    from distrain.checkpoint.background import ShardStaging, Staging

    staging = Staging() if kind == "pt" else ShardStaging()
    live = {"model": {"w": torch.randn(4, 3)}, "state": {"m": torch.ones(2), "step": 3}}
    first = staging.stage(live)
    kept = first["model"]["w"].data_ptr()
    assert kept != live["model"]["w"].data_ptr() and torch.equal(first["model"]["w"], live["model"]["w"])
    live["model"]["w"].add_(1.0)  # training goes on: the staged copy does not change with it
    assert not torch.equal(first["model"]["w"], live["model"]["w"])
    second = staging.stage(live)
    assert second["model"]["w"].data_ptr() == kept and torch.equal(second["model"]["w"], live["model"]["w"])
    assert second["state"]["step"] == 3
    live["state"]["v"] = torch.zeros(2)  # the layout changed (a new state tensor): copied, not mixed up
    third = staging.stage(live)
    assert torch.equal(third["state"]["v"], live["state"]["v"]) and torch.equal(third["model"]["w"], live["model"]["w"])


class _Killed(BaseException):
    """The process dies here: neither this change to the disk nor any later one happens."""


@contextlib.contextmanager
def _killed_at(n):
    """Count the changes a save makes to the file system (renames, links, removals, also those inside
    shutil.rmtree); the n-th and every later one raise _Killed, leaving the disk as a SIGKILL right before
    the n-th would (n=None: nothing is killed). Yields {"calls": ..., "killed": ...}."""
    seen = {"calls": 0, "killed": False}

    def counted(fn):
        def call(*args, **kwargs):
            seen["calls"] += 1
            if n is not None and seen["calls"] >= n:
                seen["killed"] = True
                raise _Killed
            return fn(*args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as patch:
        for name in ("replace", "rename", "link", "unlink", "rmdir"):
            patch.setattr(os, name, counted(getattr(os, name)))
        yield seen


@pytest.mark.parametrize(
    "kinds", [("pt", "pt"), ("shards", "shards"), ("shards", "pt")], ids=["pt", "shards", "shards-then-pt"]
)
def test_a_step_saved_again_stays_resumable_wherever_the_save_is_killed(tmp_path, kinds):
    # The same global step saved twice (a step save on an epoch's last step, then the epoch's save after a
    # requeue; a resume from an older checkpoint; the strategy changed), with a best copy: killed before each
    # change the second save makes, the step still resumes from a complete, verified copy (the old or the
    # new one), its best copy is listed whole, and saving it once more afterwards leaves no parked copy.
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def save(run, marker):
        kind = kinds[0] if marker == "old" else kinds[1]
        payload = {"epoch": 1, "step_in_epoch": 0, "global_step": 20, "metrics": {"val_loss": 0.5}, "marker": marker}
        if kind == "pt":
            payload["model"] = model.state_dict()
        save_checkpoint(
            run,
            payload,
            keep_last=2,
            is_main=True,
            keep_best=1,
            shards=(model, optimizer) if kind == "shards" else None,
        )

    def check(run, markers):
        found = find_resumable(run)
        assert found is not None, sorted(p.name for p in (run / "checkpoints").iterdir())
        manifest = Manifest.read(found)
        assert manifest.global_step == 20 and manifest.problem() is None
        assert load_payload(found, model_weights=False)["marker"] in markers
        best = list_best(run / "checkpoints")
        assert [m.global_step for m in best] == [20] and best[0].problem() is None

    save(tmp_path / "whole", "old")
    with _killed_at(None) as seen:
        save(tmp_path / "whole", "new")
    check(tmp_path / "whole", {"new"})
    assert seen["calls"] > 5 and not [p for p in (tmp_path / "whole" / "checkpoints").iterdir() if "-prev" in p.name]
    for n in range(1, seen["calls"] + 1):
        run = tmp_path / f"killed-{n}"
        save(run, "old")
        with _killed_at(n) as killed, pytest.raises(_Killed):
            save(run, "new")
        assert killed["killed"]
        check(run, {"old", "new"})
        save(run, "again")  # the resumed run saves the step once more
        check(run, {"again"})
        assert not [p for p in (run / "checkpoints").iterdir() if "-prev" in p.name], n


def _tiny_checkpoint(run, step=5):
    payload = {"model": {"w": torch.zeros(2)}, "epoch": 0, "step_in_epoch": step, "global_step": step, "metrics": {}}
    save_checkpoint(run, payload, keep_last=0, is_main=True)


def test_resume_never_moves_the_run_dirs_checkpoints_aside(tmp_path, caplog):
    _tiny_checkpoint(tmp_path)
    cfg = load_config(XOR, [f"run.dir={tmp_path}", "checkpoint.resume=never"])
    ctx = DistContext(detect({}), torch.device("cpu"), None)
    with caplog.at_level("INFO", logger="distrain"):
        maybe_resume(cfg, ctx, tmp_path, state=None)  # `never` loads nothing: the state is not touched
    assert find_resumable(tmp_path) is None  # a later checkpoint.resume=auto cannot pick the old run up
    [aside] = tmp_path.glob("checkpoints.old-*")
    assert [p.name for p in list_checkpoints(aside)] == ["step-00000005.pt"]
    assert Manifest.read(aside / "step-00000005.pt").problem() is None  # moved whole, nothing deleted
    assert f"moved to {aside}" in caplog.text and "checkpoint.resume=never" in caplog.text
    assert set_aside(tmp_path, is_main=True) is None  # nothing left to move
    _tiny_checkpoint(tmp_path)  # a second fresh start (within the same second, maybe): a name of its own
    again = set_aside(tmp_path, is_main=True)
    assert again is not None and again != aside and sorted(tmp_path.glob("checkpoints.old-*")) == sorted([aside, again])
    _tiny_checkpoint(tmp_path)

    def refused(*args):
        raise PermissionError(13, "Permission denied")

    with pytest.MonkeyPatch.context() as patch:  # a folder that cannot be moved: an error naming the key, no mixing
        patch.setattr(os, "rename", refused)
        with pytest.raises(UserError, match="checkpoint.resume=never: cannot move the checkpoints in .* aside"):
            set_aside(tmp_path, is_main=True)
    assert find_resumable(tmp_path) is not None


def test_a_fresh_start_then_a_resume_never_picks_the_older_runs_checkpoint(saved_run, tmp_path):
    # The older run reached step 60; a fresh start (checkpoint.resume=never) into its directory trains one
    # epoch (step 20) and is cut there: the automatic resume that follows continues the new run, not the old.
    run = tmp_path / "run"
    os.system(f"cp -r {saved_run} {run}")
    train(load_config(XOR, [f"run.dir={run}", *SHORT, "trainer.epochs=1", "checkpoint.resume=never"]), environ={})
    assert find_resumable(run) == run / "checkpoints" / "step-00000020.pt"
    [aside] = run.glob("checkpoints.old-*")
    assert list_checkpoints(aside)[0].name == "step-00000060.pt"
    train(load_config(XOR, [f"run.dir={run}", *SHORT, "trainer.epochs=2"]), environ={})
    assert load_payload(find_resumable(run))["global_step"] == 40 and list(run.glob("checkpoints.old-*")) == [aside]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority: Linux only")
def test_the_background_writer_yields_to_training_until_training_waits_for_it():
    from distrain.checkpoint.background import BackgroundSaves

    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = nice()
    saves = BackgroundSaves(sharded=False)
    started, seen = threading.Event(), []

    def write():
        seen.append(nice())  # while training runs: the lowest priority
        started.set()
        time.sleep(0.2)  # training waits meanwhile: the write gets its priority back where that is allowed
        seen.append(nice())

    saves.submit(write)
    started.wait()
    saves.wait()
    recorded = threading.Event()
    saves.submit(lambda: (seen.append(nice()), recorded.set()))  # the next write yields again
    recorded.wait()
    saves.close(agree=True)
    may_raise = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
    assert seen == [19, 0 if may_raise else 19, 19] and nice() == mine == 0


@pytest.mark.parametrize("background", [True, False], ids=["background", "sync"])
@pytest.mark.parametrize("kind", ["pt", "shards"])
def test_a_save_is_hashed_as_written_and_verifies(tmp_path, kind, background, monkeypatch):
    # One pass: the checksums come from the write itself (no read of the written files to hash them, the
    # .pt's included); the checkpoint verifies against the disk and loads. torch's own zip CRC setting
    # (turned off while DCP writes shards) is as it was.
    from distrain.checkpoint import files, sharded
    from distrain.checkpoint.background import BackgroundSaves

    def no_second_read(path):
        raise AssertionError(f"{path} was read back to hash it")

    monkeypatch.setattr(sharded, "checksum_of", no_second_read)
    monkeypatch.setattr(files, "checksum_of", no_second_read)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    payload = {"epoch": 0, "step_in_epoch": 4, "global_step": 4, "metrics": {}}
    if kind == "pt":
        payload["model"] = model.state_dict()
    saves = BackgroundSaves(sharded=kind == "shards") if background else None
    shards = (model, optimizer) if kind == "shards" else None
    path = save_checkpoint(tmp_path, payload, keep_last=0, is_main=True, shards=shards, background=saves)
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on: the checkpoint holds the state it was given
    if saves is not None:
        saves.close(agree=True)
    monkeypatch.undo()
    assert torch.serialization.get_crc32_options() is True
    manifest = Manifest.read(path)
    assert manifest is not None and manifest.problem() is None and find_resumable(tmp_path) == path
    assert torch.equal(load_payload(path)["model"]["weight"], saved)


@pytest.mark.parametrize("direct", ["as_the_system_has_it", "refused", "einval_on_a_write"])
def test_a_hashing_file_holds_every_byte_written_in_order_and_their_checksum(tmp_path, direct, monkeypatch):
    # The aligned buffer (direct writes of whole chunks, the unaligned tail buffered) keeps the bytes'
    # order across writes of every size, flushes that must not write a partial block, and the fallbacks:
    # a file system without O_DIRECT, and one that refuses a direct write's alignment (EINVAL).
    import errno

    import xxhash

    from distrain.checkpoint import files

    rng = random.Random(0)
    chunks = [rng.randbytes(n) for n in (1, 4095, 4097, files._CHUNK + 5, 3, 1 << 20, 0, files._CHUNK, 7)]
    refused = []
    if direct == "refused":
        monkeypatch.setattr(files, "_set_direct", lambda fd, on: False)
    elif direct == "einval_on_a_write":
        monkeypatch.setattr(files, "_set_direct", lambda fd, on: on)  # "direct" here, but the write refuses
        write = os.write

        def einval_once(fd, data):
            if not refused:
                refused.append(len(data))
                raise OSError(errno.EINVAL, "Invalid argument")
            return write(fd, data)

        monkeypatch.setattr(files.os, "write", einval_once)
    path = tmp_path / "file"
    hashed = files.HashingFile()
    with open(path, "wb") as f:
        hashed.into(f)
        for i, chunk in enumerate(chunks):
            assert hashed.write(chunk) == len(chunk)
            hashed.flush()
            assert hashed.tell() == sum(len(c) for c in chunks[: i + 1])
        hashed.close()
        hashed.close()  # once closed, again is nothing
    monkeypatch.undo()
    data = b"".join(chunks)
    assert path.read_bytes() == data and hashed.size == len(data)
    assert hashed.hexdigest() == xxhash.xxh3_128(data).hexdigest() == files.checksum_of(path)
    assert refused == ([files._CHUNK] if direct == "einval_on_a_write" else [])


@pytest.mark.parametrize("kind", ["pt", "shards"])
def test_manifests_of_either_checksum_verify_and_damage_is_found(tmp_path, kind):
    # New manifests name their checksum (xxh3-128); those written before it was named (sha256) still verify,
    # each checksum computed here another way (hashlib over the files); a flipped byte is found under both;
    # a checksum this install does not know is named, not taken for damage.
    import hashlib
    import json

    import xxhash

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    payload = {"epoch": 0, "step_in_epoch": 4, "global_step": 4, "metrics": {}, "model": model.state_dict()}
    path = save_checkpoint(
        tmp_path, payload, keep_last=0, is_main=True, shards=(model, optimizer) if kind == "shards" else None
    )
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    assert meta["checksum"] == "xxh3_128" and "sha256" not in meta
    names = sorted(meta["files"]) if kind == "shards" else [None]
    for name in names:
        data = (path / name if name else path).read_bytes()
        listed = meta["files"][name][0] if name else meta["digest"]
        assert listed == xxhash.xxh3_128(data).hexdigest()

    # The same checkpoint as a manifest of before: sha256, under the old key.
    old = {k: v for k, v in meta.items() if k not in ("checksum", "digest")}
    if kind == "shards":
        old["files"] = {
            n: [hashlib.sha256((path / n).read_bytes()).hexdigest(), s] for n, (_, s) in meta["files"].items()
        }
        old["sha256"] = hashlib.sha256(json.dumps(old["files"], sort_keys=True).encode()).hexdigest()
    else:
        old["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(old))
    manifest = Manifest.read(path)
    assert manifest.algorithm == "sha256" and manifest.problem() is None and find_resumable(tmp_path) == path

    victim = path / names[0] if kind == "shards" else path
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    assert "damaged" in Manifest.read(path).problem()
    meta_path.write_text(json.dumps(meta))  # the new manifest over the same damage
    assert "damaged" in Manifest.read(path).problem()

    meta_path.write_text(json.dumps(dict(meta, checksum="blake9")))
    assert "'blake9'" in Manifest.read(path).problem() and find_resumable(tmp_path) is None


@pytest.mark.parametrize("kind", ["pt", "shards"])
def test_a_background_save_leaves_the_weights_copy_to_the_writer_and_the_next_step_waits_for_it(
    tmp_path, kind, monkeypatch
):
    # The copy of parameters and optimizer state (only an optimizer step changes them) is made by the writer
    # thread; the next optimizer step waits for it (the writer's copy is slowed here so the step comes
    # first). BatchNorm's running statistics change in a forward: they are copied at once. The checkpoint
    # holds the state as it was at the save.
    from distrain.checkpoint import background as bg
    from distrain.checkpoint.background import BackgroundSaves, step_owned

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(8, 3)
    model(x).sum().backward()
    optimizer.step()  # optimizer state exists
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_avg = optimizer.state[model[0].weight]["exp_avg"].clone()
    copied, original = [], bg._Deferred.copy

    def slow_copy(self):
        time.sleep(0.3)
        original(self)
        copied.append(len(self.pairs))

    monkeypatch.setattr(bg._Deferred, "copy", slow_copy)
    saves = BackgroundSaves(sharded=kind == "shards")
    payload = {"epoch": 0, "step_in_epoch": 1, "global_step": 1, "metrics": {}}
    if kind == "pt":
        payload.update(model=model.state_dict(), optimizer=optimizer.state_dict())
    shards = (model, optimizer) if kind == "shards" else None
    path = save_checkpoint(
        tmp_path,
        payload,
        keep_last=0,
        is_main=True,
        shards=shards,
        background=saves,
        owned=step_owned(model, optimizer),
    )
    seen_at_step = []
    hook = optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen_at_step.append(list(copied)))
    model(x).sum().backward()  # changes BatchNorm's running statistics: copied before save_checkpoint returned
    optimizer.step()
    hook.remove()
    saves.close(agree=True)
    # weight, bias (Linear, BatchNorm), and each one's exp_avg, exp_avg_sq and step: 4 + 12
    assert seen_at_step == [[16]] and copied == [16]
    assert not torch.equal(model[1].running_mean, expected["1.running_mean"])  # the forward did change it
    if kind == "pt":
        saved = load_payload(path)
        saved_model, saved_avg = saved["model"], saved["optimizer"]["state"][0]["exp_avg"]
    else:
        fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
        fresh(x).sum().backward()
        fresh_opt.step()
        from distrain.checkpoint.sharded import load_sharded_into

        load_sharded_into(path, fresh, fresh_opt)
        saved_model, saved_avg = fresh.state_dict(), fresh_opt.state[fresh[0].weight]["exp_avg"]
    assert all(torch.equal(saved_model[k], v) for k, v in expected.items())
    assert torch.equal(saved_avg, expected_avg)
    assert Manifest.read(path).problem() is None


def test_what_only_an_optimizer_step_changes():
    # Parameters and optimizer state (of each optimizer of a set); never buffers; nothing at all for an
    # optimizer of its own kind (its step has no hooks to wait on).
    from distrain.checkpoint.background import step_owned
    from distrain.loop.several import OptimizerSet

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    first = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    second = torch.optim.Adam(model[1].parameters(), lr=0.1)
    model(torch.randn(8, 3)).sum().backward()
    first.step()
    second.step()
    owned = step_owned(model, OptimizerSet({"a": first, "b": second}))
    ptrs = [t.untyped_storage().data_ptr() for t in model.parameters()]
    ptrs += [t.untyped_storage().data_ptr() for o in (first, second) for s in o.state.values() for t in s.values()]
    assert owned == set(ptrs) and len(owned) == 4 + 2 + 6
    assert not owned & {b.untyped_storage().data_ptr() for b in model.buffers()}

    class OwnKind:
        state: dict = {}

        def step(self):
            pass

    assert step_owned(model, OwnKind()) == set()
