"""Streams (data/shards.py, data/stream_plan.py, data/streams.py): IterableDatasets and sharded data sets,
each sample once per epoch over all ranks and workers, the same global order on any world size, exact
mid-epoch resume that seeks instead of reading again, and the refusal of a stream that cannot be split."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.id_shards import IdShards, Sequential, Unseekable
from helpers.runs import REPO, assert_bitwise, clean_env, newest_payload, newest_weights, run_cli, run_torchrun

from distrain.data.batches import LoaderOptions
from distrain.data.stream_plan import StreamPlan
from distrain.data.streams import StreamBatches

CONFIG = str(REPO / "tests" / "configs" / "id_stream.yaml")
TOTAL, BATCH, STEPS = 227, 12, 19  # the config's stream: 12 shards (11 of 20, 1 of 7), 19 steps an epoch


# ------------------------------------------------------------------------------------------ the plan


def round_robin(lengths: list[int]) -> list[tuple[int, int]]:
    """The epoch's order written out the slow way: (lane, sample of the lane), one lane after the other."""
    order, t = [], 0
    while len(order) < sum(lengths):
        order += [(c, t) for c in range(len(lengths)) if t < lengths[c]]
        t += 1
    return order


def test_the_plan_is_round_robin_over_the_lanes_and_every_sample_is_in_one_step():
    rng = np.random.default_rng(0)
    for _ in range(100):
        sizes = rng.integers(0, 15, rng.integers(1, 9)).tolist()
        if not sum(sizes):
            continue
        plan = StreamPlan(
            sizes, lanes=int(rng.integers(1, 7)), global_batch_size=int(rng.integers(1, 20)), seed=1, shuffle=True
        )
        order = round_robin(plan.lane_lengths(3).tolist())
        for lane in range(plan.lanes):
            assert plan.lane_positions(3, lane).tolist() == [p for p, (c, _) in enumerate(order) if c == lane]
            counts = plan.lane_counts(3, lane)
            assert len(counts) == plan.num_steps and counts.sum() == plan.lane_lengths(3)[lane]
        assert sum(plan.global_size(k) for k in range(plan.num_steps)) == sum(sizes)


def test_the_shard_order_is_seeded_per_epoch_and_each_shard_is_in_one_lane():
    plan = StreamPlan([5] * 12, lanes=4, global_batch_size=8, seed=3, shuffle=True)
    for epoch in range(3):
        dealt = sorted(np.concatenate([plan.lane_shards(epoch, c) for c in range(4)]).tolist())
        assert dealt == list(range(12))
    assert plan.shard_order(0).tolist() != plan.shard_order(1).tolist()
    assert (
        plan.shard_order(1).tolist()
        == StreamPlan([5] * 12, lanes=4, global_batch_size=8, seed=3, shuffle=True).shard_order(1).tolist()
    )


def _batches(dataset, rank: int, world: int, *, workers: int = 0, lanes: int = 12, window: int = 0) -> StreamBatches:
    sizes = [dataset.shard_size(s) for s in dataset.shards()]
    plan = StreamPlan(sizes, lanes=lanes, global_batch_size=BATCH, seed=5, shuffle=True, shuffle_window=window)
    return StreamBatches(
        dataset,
        dataset.shards(),
        plan,
        torch.device("cpu"),
        rank=rank,
        world_size=world,
        options=LoaderOptions(workers),
        seed=5,
        target_key="y",
    )


def _ids(batch) -> list[int]:
    return batch.inputs["id"].tolist()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_sample_once_per_epoch_and_each_step_the_same_samples_on_any_world_size(world):
    one = {b.step: sorted(_ids(b)) for b in _batches(IdShards(12, 20, last=7), 0, 1)}
    steps: dict[int, list[int]] = defaultdict(list)
    for rank in range(world):
        for batch in _batches(IdShards(12, 20, last=7), rank, world):
            steps[batch.step] += _ids(batch)
            assert batch.global_size == min(BATCH, TOTAL - batch.step * BATCH)
    assert {k: sorted(v) for k, v in steps.items()} == one
    assert sorted(i for v in steps.values() for i in v) == list(range(TOTAL))


def test_a_ranks_share_is_the_same_bits_with_any_number_of_workers_and_any_reader():
    reference = [(b.step, b.inputs["x"], b.targets) for b in _batches(IdShards(12, 20, last=7), 1, 2)]
    for dataset, workers in (
        (IdShards(12, 20, last=7), 2),
        (Sequential(12, 20, last=7), 3),
        (Unseekable(12, 20, last=7), 0),
    ):
        got = [(b.step, b.inputs["x"], b.targets) for b in _batches(dataset, 1, 2, workers=workers)]
        assert len(got) == len(reference)
        for (s1, x1, y1), (s2, x2, y2) in zip(reference, got):
            assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)


def test_a_mid_epoch_start_seeks_each_lane_and_continues_the_same_batches():
    whole = {b.step: _ids(b) for b in _batches(Sequential(12, 20, last=7), 0, 2)}
    dataset = Sequential(12, 20, last=7)
    resumed = _batches(dataset, 0, 2)
    dataset.opened.clear()  # (the source read one sample to know a sample's shape)
    resumed.set_epoch(0)
    resumed.set_start_step(7)
    got = {b.step: _ids(b) for b in resumed}
    assert got == {k: v for k, v in whole.items() if k >= 7}
    # Each of this rank's lanes opened its first shard at the lane's position, nothing read from 0 again.
    first_opens = {}
    for shard, start in dataset.opened:
        first_opens.setdefault(shard, start)
    assert any(start > 0 for start in first_opens.values())
    assert sum(first_opens.values()) + sum(len(v) for v in got.values()) == sum(
        dataset.shard_size(s) for s in first_opens
    )


@pytest.mark.parametrize("reader", [IdShards, Sequential, Unseekable])
def test_a_shuffle_window_mixes_each_lane_and_resumes_in_the_same_order_with_any_reader(reader):
    # Windows of 7 in lanes of 20 (the short shard: 7): the seeded order of each window follows from its
    # place, so every reader gives the same batches, and a start mid-window continues them.
    plain = {b.step: _ids(b) for b in _batches(IdShards(12, 20, last=7), 0, 1)}
    whole = {b.step: _ids(b) for b in _batches(IdShards(12, 20, last=7), 0, 1, window=7)}
    assert whole != plain and {k: sorted(v) for k, v in whole.items()} != {k: sorted(v) for k, v in plain.items()}
    assert sorted(i for v in whole.values() for i in v) == list(range(TOTAL))
    batches = _batches(reader(12, 20, last=7), 1, 2, workers=0, window=7)
    mine = {b.step: _ids(b) for b in batches}
    assert {k: sorted(v) for k, v in mine.items()} == {
        k: sorted(i for i in v if i in set().union(*mine.values())) for k, v in whole.items()
    }
    batches.set_epoch(0)
    batches.set_start_step(5)  # lanes are 5 x 1 sample in: mid-window
    assert {b.step: _ids(b) for b in batches} == {k: v for k, v in mine.items() if k >= 5}


def test_too_few_lanes_for_the_readers_still_gives_every_sample_once():
    steps: dict[int, list[int]] = defaultdict(list)
    for rank in range(3):
        for batch in _batches(IdShards(4, 10), rank, 3, lanes=2):
            steps[batch.step] += _ids(batch)  # rank 2 reads nothing: empty shares shaped like a sample
    assert sorted(i for v in steps.values() for i in v) == list(range(40))


# ------------------------------------------------------------------------------------- one process


def _records(ids_dir: Path) -> dict[int, list[int]]:
    """The ids each global step trained on, over all ranks (sorted). A rank's forwards of one step (one a
    step, or one per chunk in exact mode) add up; when a rank's steps go back (a restart resumed from an
    earlier checkpoint), what it had recorded from there on is dropped: the resumed run trains it again."""
    merged: dict[int, list[int]] = defaultdict(list)
    for path in ids_dir.glob("ids-*.jsonl"):
        steps: dict[int, list[int]] = defaultdict(list)
        last = -1
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["step"] < last:
                steps = defaultdict(list, {k: v for k, v in steps.items() if k < record["step"]})
            steps[record["step"]] += record["ids"]
            last = record["step"]
        for step, ids in steps.items():
            merged[step] += ids
    return {step: sorted(ids) for step, ids in sorted(merged.items())}


def _assert_each_sample_once_per_epoch(steps: dict[int, list[int]], epochs: int = 2) -> None:
    assert sorted(steps) == list(range(STEPS * epochs))
    for epoch in range(epochs):
        seen = sorted(i for k in range(epoch * STEPS, (epoch + 1) * STEPS) for i in steps[k])
        assert seen == list(range(TOTAL)), f"epoch {epoch}"


def _env(ids_dir: Path) -> dict[str, str]:
    ids_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    return clean_env(PYTHONPATH=path, IDS_DIR=str(ids_dir))


def test_a_stream_without_shards_is_refused_for_several_readers_with_the_way_out(tmp_path):
    run = tmp_path / "run"
    args = ["train", CONFIG, f"run.dir={run}", "data.args.kind=plain"]
    result = run_cli(*args, env=_env(tmp_path / "ids"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "data.split_by" in result.stderr and "open_shard(shard, start)" in result.stderr
    assert not run.exists()


def test_a_stream_without_shards_trains_split_by_samples_each_sample_once(tmp_path):
    ids = tmp_path / "ids"
    args = ["train", CONFIG, f"run.dir={tmp_path / 'run'}", "data.args.kind=plain", "data.split_by=samples"]
    result = run_cli(*args, env=_env(ids))
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_each_sample_once_per_epoch(_records(ids))


def test_a_stream_without_a_length_needs_steps_per_epoch_and_goes_on_across_epochs(tmp_path):
    from helpers.id_shards import Plain

    import distrain

    cfg = distrain.load_config(CONFIG, [f"run.dir={tmp_path / 'run'}", "data.num_workers=0"])
    with pytest.raises(distrain.ConfigError, match="trainer.steps_per_epoch"):
        distrain.fit(cfg, train_data=Plain(50), test_data=IdShards(3, 10))
    cfg = distrain.load_config(
        CONFIG, [f"run.dir={tmp_path / 'run2'}", "data.num_workers=0", "trainer.steps_per_epoch=3"]
    )
    from helpers.id_shards import IdModel, StepCounter

    (tmp_path / "ids").mkdir()
    result = distrain.fit(
        cfg,
        model=IdModel(str(tmp_path / "ids")),
        train_data=Plain(50),
        test_data=IdShards(3, 10),
        callbacks=[StepCounter()],
    )
    assert result.global_step == 6
    steps = _records(tmp_path / "ids")
    # 6 steps of 12 from a stream of 50: positions 0..71, the stream restarted after 50.
    assert steps == {k: sorted(p % 50 for p in range(12 * k, 12 * k + 12)) for k in range(6)}
    # Or the run's steps: one epoch of trainer.max_steps.
    cfg = distrain.load_config(CONFIG, [f"run.dir={tmp_path / 'run3'}", "data.num_workers=0", "trainer.max_steps=5"])
    result = distrain.fit(cfg, model=IdModel(), train_data=Plain(50), test_data=IdShards(3, 10))
    assert result.global_step == 5 and result.epochs_done == 1


# ---------------------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: torchrun x2, 2 DataLoader workers each, 2 epochs."""
    root = tmp_path_factory.mktemp("stream_ref")
    result = run_torchrun(2, "train", CONFIG, f"run.dir={root / 'run'}", env=_env(root / "ids"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_torchrun_x2_with_2_workers_reads_each_sample_once_per_epoch(uninterrupted):
    _assert_each_sample_once_per_epoch(_records(uninterrupted / "ids"))


@pytest.mark.slow
def test_a_sigkill_mid_epoch_under_max_restarts_resumes_to_the_same_weights(uninterrupted, tmp_path):
    # 19 steps an epoch, a checkpoint every 10: rank 1 dies after step 25 (epoch 1), the restart resumes at 20.
    killed = run_torchrun(
        2,
        "train",
        CONFIG,
        f"run.dir={tmp_path / 'run'}",
        extra=("--max-restarts=1",),
        script="tests/helpers/kill_at_step.py",
        env={**_env(tmp_path / "ids"), "KILL_STEP": "25", "KILL_RANK": "1"},
    )
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "(exitcode: -9)" in killed.stderr or "exitcode  : -9" in killed.stderr
    assert_bitwise(newest_weights(uninterrupted / "run"), newest_weights(tmp_path / "run"))
    assert _records(tmp_path / "ids") == _records(uninterrupted / "ids")


@pytest.mark.slow
def test_a_run_killed_on_2_processes_continues_the_same_global_order_on_3_and_exact_mode_is_bitwise(
    uninterrupted, tmp_path
):
    # trainer.exact: each lane's samples of a step are one chunk, so the weights are those of one process.
    one = run_cli("train", CONFIG, f"run.dir={tmp_path / 'one'}", "trainer.exact=true", env=_env(tmp_path / "ids1"))
    assert one.returncode == 0, one.stderr[-3000:]
    env = {**_env(tmp_path / "ids"), "KILL_STEP": "25", "KILL_RANK": "1"}
    run = [f"run.dir={tmp_path / 'run'}", "trainer.exact=true"]
    killed = run_torchrun(2, "train", CONFIG, *run, script="tests/helpers/kill_at_step.py", env=env)
    assert killed.returncode != 0
    resumed = run_torchrun(3, "train", CONFIG, *run, "data.num_workers=1", env=_env(tmp_path / "ids"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming a 2-process checkpoint on 3 processes" in resumed.stderr
    # Every step, the killed part and the resumed part alike, trained on the uninterrupted run's samples.
    assert _records(tmp_path / "ids") == _records(uninterrupted / "ids") == _records(tmp_path / "ids1")
    assert_bitwise(newest_weights(tmp_path / "one"), newest_weights(tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["map", "iterable"])
def test_hugging_face_datasets_under_torchrun_x2_read_each_row_once(kind, tmp_path):
    pytest.importorskip("datasets")
    ids = tmp_path / "ids"
    args = ["train", CONFIG, f"run.dir={tmp_path / 'run'}", "data.name=helpers.id_shards:hf_data"]
    args += [f"data.args={{kind: {kind}}}", "checkpoint.every_steps=0"]
    result = run_torchrun(2, *args, env=_env(ids))
    assert result.returncode == 0, result.stderr[-3000:]
    if kind == "iterable":
        assert "230 samples in 4 shards" in result.stdout + result.stderr
    steps = _records(ids)
    per_epoch = -(-230 // BATCH)
    for epoch in range(2):
        seen = sorted(i for k in range(epoch * per_epoch, (epoch + 1) * per_epoch) for i in steps[k])
        assert seen == list(range(230)), f"epoch {epoch}"


def test_a_resume_over_other_shards_or_lanes_is_refused_naming_what_changed(tmp_path):
    run = f"run.dir={tmp_path / 'run'}"
    first = run_cli("train", CONFIG, run, "trainer.epochs=1", "data.num_workers=0", env=_env(tmp_path / "ids"))
    assert first.returncode == 0, first.stderr[-2000:]
    more = ["trainer.epochs=2", "data.num_workers=0"]
    lanes = run_cli("train", CONFIG, run, *more, "data.lanes=4", env=_env(tmp_path / "ids"))
    assert lanes.returncode == 2 and "data.lanes" in lanes.stderr and "Traceback" not in lanes.stderr
    shards = run_cli("train", CONFIG, run, *more, "data.args.last=9", env=_env(tmp_path / "ids"))
    assert shards.returncode == 2 and "Traceback" not in shards.stderr
    assert "data.args" in shards.stderr  # (the config names it; a fit() given other shards: `shards`)


def test_fit_resumed_with_other_shards_is_refused(tmp_path):
    from helpers.id_shards import IdModel

    import distrain

    cfg = distrain.load_config(
        CONFIG, [f"run.dir={tmp_path}", "data.num_workers=0", "trainer.epochs=1", "callbacks=[]"]
    )
    distrain.fit(cfg, model=IdModel(), train_data=IdShards(12, 20, last=7), test_data=IdShards(3, 10))
    cfg = distrain.load_config(
        CONFIG, [f"run.dir={tmp_path}", "data.num_workers=0", "trainer.epochs=2", "callbacks=[]"]
    )
    with pytest.raises(distrain.ConfigError, match="shards"):
        distrain.fit(cfg, model=IdModel(), train_data=IdShards(12, 20, last=9), test_data=IdShards(3, 10))


def test_steps_per_epoch_shortens_the_epochs_of_a_map_style_set_too(tmp_path):
    result = run_cli(
        "train",
        str(REPO / "configs" / "xor.yaml"),
        f"run.dir={tmp_path}",
        "trainer.epochs=2",
        "trainer.steps_per_epoch=3",
        "log.plots=false",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from helpers.runs import records

    train = records(tmp_path, "train")
    assert [r["global_step"] for r in train] == [3, 6] and all(r["samples"] == 3 * 128 for r in train)


def test_max_steps_ends_the_run_mid_epoch_and_a_later_one_continues_it(tmp_path):
    from helpers.runs import records

    xor = str(REPO / "configs" / "xor.yaml")  # 20 steps an epoch
    args = ["train", xor, f"run.dir={tmp_path}", "trainer.epochs=3", "log.plots=false"]
    first = run_cli(*args, "trainer.max_steps=25")
    assert first.returncode == 0, first.stderr[-2000:]
    assert [r["global_step"] for r in records(tmp_path, "train")] == [20, 25]
    assert newest_payload(tmp_path)["global_step"] == 25
    more = run_cli(*args, "trainer.max_steps=45")
    assert more.returncode == 0, more.stderr[-2000:]
    assert [r["global_step"] for r in records(tmp_path, "train")] == [20, 25, 45]


def test_the_shipped_stream_config_trains_from_shards_written_by_distrain_shards(tmp_path):
    from helpers.runs import records, write_fashion_mnist

    write_fashion_mnist(tmp_path / "data", 300, 50)
    shards = tmp_path / "shards"
    source = [f"data.args.root={tmp_path / 'data'}", "data.args.download=false"]
    written = run_cli(
        "shards", str(REPO / "configs" / "fashion_mnist.yaml"), str(shards), "--samples-per-shard", "64", *source
    )
    assert written.returncode == 0, written.stderr[-2000:]
    assert len(list((shards / "train").glob("shard-*.0.npy"))) == 5  # 300 samples: 4 x 64 + 44
    stream = [f"data.args.root={shards}", f"run.dir={tmp_path / 'run'}", "trainer.epochs=1", "log.plots=false"]
    result = run_cli("train", str(REPO / "configs" / "fashion_mnist_stream.yaml"), *stream)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "300 samples in 5 shards, dealt to 5 lanes" in result.stdout + result.stderr
    (record,) = records(tmp_path / "run", "train")
    assert record["samples"] == 300 and records(tmp_path / "run", "test")[0]["samples"] == 50


def test_a_stream_without_a_length_refuses_a_resume_with_another_epoch_length(tmp_path):
    from helpers.id_shards import IdModel, Plain

    import distrain

    def fit(steps: str):
        cfg = distrain.load_config(CONFIG, [f"run.dir={tmp_path}", "data.num_workers=0", "callbacks=[]", steps])
        return distrain.fit(cfg, model=IdModel(), train_data=Plain(50), test_data=IdShards(3, 10))

    assert fit("trainer.max_steps=4").global_step == 4
    with pytest.raises(distrain.ConfigError, match="epoch_steps: 4 in the checkpoint, 6 now"):
        fit("trainer.max_steps=6")


@pytest.mark.parametrize("reader,workers", [(IdShards, 0), (Sequential, 0), (Sequential, 2)])
def test_a_shard_that_gives_fewer_samples_than_its_size_stops_the_run_naming_it(reader, workers):
    class Overstated(reader):
        def shard_size(self, shard):
            return self.sizes[shard] + (shard == 3)

        def read_range(self, shard, start, stop):  # what the shard holds, whatever was asked
            return IdShards.read_range(self, shard, start, min(stop, self.sizes[shard]))

    if reader is Sequential:
        Overstated.read_range = None
    dataset = Overstated(12, 20, last=7)
    with pytest.raises(
        Exception, match=r"shard 3 gave (20|6) samples from sample (0|14), where its shard_size says (21|7)"
    ):
        for _ in _batches(dataset, 0, 1, window=7):
            pass


@pytest.mark.slow
def test_accelerate_launch_x2_with_the_accelerate_engine_reads_each_sample_once_per_epoch(tmp_path):
    from helpers.runs import PYTHON, free_port, run_group

    accelerate = str(Path(PYTHON).parent / "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes=2", f"--main_process_port={free_port()}"]
    cmd += ["-m", "distrain", "train", CONFIG, f"run.dir={tmp_path / 'run'}", "engine=accelerate"]
    result = run_group(cmd, env=_env(tmp_path / "ids"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_each_sample_once_per_epoch(_records(tmp_path / "ids"))
