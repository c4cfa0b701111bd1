"""trainer.exact: the same bits on any number of processes; and the default mode's per-rank random streams.

Unit tests of the two pieces exactness rests on (the fixed-point sum is order-free; a chunk holds the same
samples on every world size), the config's refusals, then real runs: pytorch/examples' MNIST Net with
dropout on 1, 2, 3 and 4 processes and a resume from 2 onto 3; XOR with accumulation and bf16.
"""

from __future__ import annotations

import math
import os
import random
import warnings

import pytest
import torch
from helpers.runs import (
    PYTHON,
    REPO,
    XOR,
    assert_bitwise,
    clean_env,
    newest_payload,
    newest_weights,
    records,
    run_cli,
    run_group,
    run_torchrun,
    spawn,
)
from torch import nn

from distrain.config.parse import load_config
from distrain.data import Batch
from distrain.data.sampling import GlobalBatchSampler
from distrain.errors import ConfigError
from distrain.launch import dist
from distrain.launch.env import DistEnv
from distrain.strategies.exact import ExactChunks, chunk_seed, count_chunks, running_statistics
from distrain.strategies.exact_sum import ExactSum, SmallExactSum, exact_sum

# ------------------------------------------------------------------------------------ the exact sum


LAYOUTS = [ExactSum, SmallExactSum]  # tensor by tensor (torch), one vector a chunk (numpy): the same bits


def _sum_as_ranks(reduce: ExactSum, groups: list[list[torch.Tensor]]) -> torch.Tensor:
    """ExactSum's phases with the two all-reduces done by hand: the chunks split into `groups` (ranks: each
    its own sum of `reduce`'s layout), the maxima and the partial sums combined in the order of `groups`."""
    ranks = [type(reduce)(reduce.params, reduce.chunks) for _ in groups]
    chunks = [[rank.chunk([g.clone()]) for g in group] for rank, group in zip(ranks, groups)]  # rounded in place
    max_abs = torch.stack([rank.local_max(group) for rank, group in zip(ranks, chunks)]).amax(dim=0)
    grids = reduce.grids(max_abs.tolist())
    total = torch.zeros(sum(reduce.numels), dtype=torch.float64)
    for rank, group in zip(ranks, chunks):
        rank.round(group, grids)
        total += rank.partial(group)
    return reduce.finish(total, grids)[0].clone()  # finish's buffer is reused by the next call


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_fixed_point_sum_is_the_same_in_50_orders_and_groupings(layout):
    gen = torch.Generator().manual_seed(0)
    # 12 chunk gradients of one tensor, over 7 orders of magnitude (as real gradients are)
    grads = [
        torch.randn(1000, generator=gen) * 10 ** torch.randint(-4, 3, (1,), generator=gen).item() for _ in range(12)
    ]
    reduce = layout([nn.Parameter(torch.zeros(1000))], chunks=12)
    rng = random.Random(1)
    results, float_sums = set(), set()
    for _ in range(50):
        order = rng.sample(grads, len(grads))
        ranks = rng.choice([1, 2, 3, 4])
        groups = [order[r::ranks] for r in range(ranks)]
        rng.shuffle(groups)  # the all-reduce's order of the ranks
        results.add(_sum_as_ranks(reduce, groups).numpy().tobytes())
        plain = torch.zeros(1000)
        for group in groups:
            plain += sum(group, torch.zeros(1000))
        float_sums.add(plain.numpy().tobytes())
    assert len(results) == 1
    assert len(float_sums) > 1  # the negative control: float32 sums do depend on the order
    exact = torch.stack(grads).double().sum(0)
    assert (_sum_as_ranks(reduce, [grads]).double() - exact).abs().max() <= exact.abs().max() * 2**-23


@pytest.mark.parametrize("layout", LAYOUTS)
def test_exact_sum_in_one_process_keeps_nan_inf_and_zero_gradients(layout):
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    params.append(nn.Parameter(torch.zeros(2)))
    chunk_grads = [
        [torch.tensor([1.0, 2.0, 3.0]), None, torch.tensor([float("nan"), 0.0]), torch.tensor([1.0, float("inf")])],
        [torch.tensor([0.5, 0.25, -3.0]), None, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0])],
    ]
    reduce = layout(params, chunks=2)
    summed = reduce([reduce.chunk(grads) for grads in chunk_grads])
    assert torch.equal(summed[0], torch.tensor([1.5, 2.25, 0.0]))
    assert torch.equal(summed[1], torch.zeros(2))
    assert summed[2].isnan().any()  # the non-finite guard sees it
    # an Inf alone (an fp16 overflow): kept, for the guard and the gradient scaler's skip
    assert summed[3][1] == float("inf") and summed[3][0] == 3.0


@pytest.mark.parametrize("chunks", [1, 2, 5])
@pytest.mark.parametrize("scale", [1e-44, 1e-38, 1e-20, 1.0, 1e30, 3e37])
def test_both_layouts_give_the_rounded_sum_computed_in_float64_bit_for_bit(scale, chunks):
    """Gradients from float32's subnormals (grid steps down to 2^-200, beyond float32's powers of two) to
    near its largest values, over 6 orders of magnitude within each tensor, one tensor missing in one
    chunk, one of size zero: both layouts (and the one-chunk route, which skips float64) give, bit for bit
    (the sign of zero too), round(g / 2^x) summed and times 2^x computed here in float64."""
    gen = torch.Generator().manual_seed(chunks)
    shapes = [(7, 3), (3,), (0,), (1,), (50, 2)]
    params = [nn.Parameter(torch.zeros(shape)) for shape in shapes]
    chunk_grads: list[list[torch.Tensor | None]] = [
        [torch.randn(s, generator=gen) * scale * 10 ** torch.randint(-6, 1, s, generator=gen).float() for s in shapes]
        for _ in range(chunks)
    ]
    if chunks > 1:
        chunk_grads[1][3] = None
    results = []
    for layout in LAYOUTS:
        reduce = layout(params, chunks)
        held = [reduce.chunk([None if g is None else g.clone() for g in grads]) for grads in chunk_grads]
        results.append([t.clone() for t in reduce(held)])
    spare = math.ceil(math.log2(chunks)) + 1
    for i in range(len(shapes)):
        given = [grads[i].double() for grads in chunk_grads if grads[i] is not None]
        top = max(g.abs().max().item() if g.numel() else 0.0 for g in given)
        x = math.frexp(top)[1] - 52 + spare if top > 0 else 0
        counts = sum((torch.round(g * 2.0**-x) for g in given), torch.zeros(shapes[i], dtype=torch.float64))
        expected = (counts * 2.0**x).float()
        if chunks == 1:  # the one-chunk route keeps round()'s sign of zero; from float64, +0
            expected = torch.where(expected == 0, torch.round(given[0] * 2.0**-x).float(), expected)
        for result in results:
            assert result[i].view(torch.int32).tolist() == expected.view(torch.int32).tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunk_grads", [[[None], [1.0]], [[None]], [[None], [None]]], ids=str)
def test_chunks_without_any_gradient_add_nothing(layout, chunk_grads):
    """A chunk whose backward reached no parameter (or a step where none did) adds zeros."""
    param = nn.Parameter(torch.zeros(3))
    reduce = layout([param], chunks=len(chunk_grads))
    held = [reduce.chunk([None if g is None else torch.full((3,), g)]) for (g,) in chunk_grads]
    expected = torch.full((3,), sum(g for (g,) in chunk_grads if g is not None), dtype=torch.float32)
    assert torch.equal(reduce(held)[0], expected)


@pytest.mark.parametrize("chunks", [1, 2])
def test_a_float64_parameter_gets_a_float64_gradient_on_its_own_grid(chunks):
    """Values float32 cannot hold (1e-300, 1e300, 2^-1060) stay float64, on both routes (one chunk: in
    place; two: the float64 counts), bit for bit what the grid arithmetic gives."""
    grads = torch.tensor([1.0 / 3.0, 1e-300, 1e300, -(2.0**-1060)], dtype=torch.float64)
    param = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    reduce = exact_sum([param], chunks)
    assert type(reduce) is ExactSum  # float64: the per-tensor layout
    held = [reduce.chunk([grads.clone()])] + [reduce.chunk([torch.zeros(4, dtype=torch.float64)])] * (chunks - 1)
    result = reduce(held)[0]
    x = math.frexp(1e300)[1] - 52 + math.ceil(math.log2(chunks)) + 1
    expected = [math.ldexp(round(math.ldexp(g, -x)), x) for g in grads.tolist()]  # round(): ties to even
    assert result.dtype == torch.float64 and result.tolist() == [v + 0.0 for v in expected]
    # Next to its tensor's largest value, a value keeps float64's precision, less the grid's spare bits
    third = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    reduce = exact_sum([third], chunks)
    one = torch.tensor([1.0 / 3.0], dtype=torch.float64)
    summed = reduce([reduce.chunk([one.clone()]) for _ in range(chunks)])[0].item()
    assert abs(summed - chunks / 3.0) <= 2.0**-50 and summed != float(torch.tensor(chunks / 3.0).float())


def test_the_small_layout_carries_inf_and_overflow_without_a_warning():
    """An Inf gradient and a sum beyond float32's range: Inf, as ExactSum's torch kernels give, and no
    numpy RuntimeWarning (a run with warnings as errors would stop in one layout only)."""
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))]
    big = torch.finfo(torch.float32).max
    chunk_grads = [
        [torch.tensor([float("inf"), 1.0]), torch.tensor([big])],
        [torch.tensor([-1.0, 1.0]), torch.tensor([big])],
    ]
    for layout in LAYOUTS:
        reduce = layout(params, chunks=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            summed = reduce([reduce.chunk([g.clone() for g in grads]) for grads in chunk_grads])
        assert summed[0][0] == float("inf") and summed[0][1] == 2.0 and summed[1][0] == float("inf"), layout


def _one_chunk_on_rank_0(rank, world, port, out):
    """K = 1 on 2 ranks (a stream of one lane): rank 0 holds the chunk, rank 1 none; both sum, in both layouts."""
    env = DistEnv("slurm", rank, rank, world, world, 0, "127.0.0.1", port)
    with dist.distributed(env, backend="auto", timeout_s=30):  # a rank left out of a collective: fails in 30 s
        for layout in LAYOUTS:
            reduce = layout([nn.Parameter(torch.zeros(3))], chunks=1)
            held = [reduce.chunk([torch.tensor([1.0, -2.0, 2.0**-60])])] if rank == 0 else []
            torch.save(reduce(held)[0].clone(), out / f"{layout.__name__}-{rank}.pt")


def test_one_chunk_in_all_on_one_of_two_ranks_sums_on_both(tmp_path):
    """The one-chunk route skips the float64 all-reduce only in one process: with one chunk on one of two
    ranks, both ranks take the collective and end with the chunk's gradient (2^-60 below the grid: 0)."""
    spawn(_one_chunk_on_rank_0, 2, tmp_path)
    for layout in LAYOUTS:
        for rank in range(2):
            got = torch.load(tmp_path / f"{layout.__name__}-{rank}.pt")
            assert got.tolist() == [1.0, -2.0, 0.0], (layout, rank)


# ------------------------------------------------------------------------------------ the chunks


@pytest.mark.parametrize("size", [96 * 3, 96 * 3 - 7, 96 * 2 + 5])  # full batches; uneven last; < 12 in the last
def test_every_chunk_holds_the_same_samples_on_every_world_size(size):
    seen = {}
    for world in (1, 2, 3, 4):
        chunks: dict[tuple[int, int], list[int]] = {}
        for rank in range(world):
            sampler = GlobalBatchSampler(
                range(size), num_replicas=world, rank=rank, global_batch_size=96, shuffle=True, seed=3
            )
            step_fn = ExactChunks(count_chunks(96, 8, world, None), rank=rank, world_size=world)
            for step, indices in sampler.rank_batches():
                ids = torch.tensor(indices)
                batch = Batch(step, ids.float().unsqueeze(1), ids, sampler.global_size(step))
                for chunk, inputs, targets in step_fn.local_chunks(batch):
                    assert torch.equal(inputs[:, 0].long(), targets)
                    chunks[(step, chunk)] = targets.tolist()
        seen[world] = chunks
    assert seen[2] == seen[1] and seen[3] == seen[1] and seen[4] == seen[1]
    every = sorted(i for ids in seen[1].values() for i in ids)
    assert every == list(range(size))  # each sample once per epoch


def test_chunk_seeds_differ_by_step_and_chunk():
    seeds = {chunk_seed(0, step, chunk) for step in range(100) for chunk in range(64)}
    assert len(seeds) == 6400


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["strategy=diloco"], "trainer.exact"),  # its replicas train apart (fsdp: test_exact_fsdp.py)
        (["engine=accelerate"], "trainer.exact"),
    ],
)
def test_what_exact_mode_refuses_is_named(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(XOR, ["trainer.exact=true", *overrides])
    assert err.value.key == key


def test_a_chunk_count_that_does_not_divide_over_the_processes_is_refused():
    with pytest.raises(ConfigError) as err:
        count_chunks(96, 24, 3, lanes=None)
    assert err.value.key == "trainer.exact_chunk" and "1, 2, 4 processes" in str(err.value)
    with pytest.raises(ConfigError, match="7 does not divide data.global_batch_size 128") as err:
        count_chunks(128, 7, 1, lanes=None)
    assert err.value.key == "trainer.exact_chunk"
    assert count_chunks(96, 24, 3, lanes=6) == 6  # a sharded stream's chunks are its lanes: any world size


def test_running_statistics_are_replayed_as_the_layer_would_update_them_chunk_by_chunk():
    """RunningStatistics against BatchNorm's own updates: three chunks through a layer in training mode one
    after the other (what one process without exact mode does) move the running mean and variance as the
    replay does (to float rounding), the batches counted, both with a momentum and with None."""
    from distrain.strategies.exact import RunningStatistics

    torch.manual_seed(0)
    chunks = [torch.randn(4, 3) * (i + 1) + i for i in range(3)]
    for momentum in (0.1, None):
        ours, theirs = nn.BatchNorm1d(3, momentum=momentum), nn.BatchNorm1d(3, momentum=momentum)
        for chunk in chunks:
            theirs(chunk)
        stats = RunningStatistics(running_statistics(ours), len(chunks))
        with stats.capturing():
            for j in (2, 0, 1):  # recorded in any order: replayed in chunk order
                stats.chunk(j)
                ours(chunks[j])
        stats.finish()
        assert ours.momentum == momentum and int(ours.num_batches_tracked) == 3
        assert torch.allclose(ours.running_mean, theirs.running_mean, atol=1e-6)
        assert torch.allclose(ours.running_var, theirs.running_var, atol=1e-5)
    assert running_statistics(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4, track_running_stats=False))) == []


def test_a_layer_that_does_not_run_is_not_updated_and_one_that_runs_twice_is_refused():
    from distrain.strategies.exact import RunningStatistics

    skipped, frozen = nn.BatchNorm1d(3), nn.BatchNorm1d(3).eval()
    stats = RunningStatistics(running_statistics(nn.ModuleDict({"skipped": skipped, "frozen": frozen})), 2)
    with stats.capturing():
        for j in range(2):
            stats.chunk(j)
            frozen(torch.randn(4, 3))  # eval mode: uses its statistics, updates nothing
            if j == 1:
                skipped(torch.randn(4, 3) + 5)  # runs in chunk 1 only (a block skipped at random)
    stats.finish()
    assert int(skipped.num_batches_tracked) == 1 and skipped.running_mean.mean() > 0.4  # one update of 0.1 * ~5
    assert int(frozen.num_batches_tracked) == 0 and torch.equal(frozen.running_mean, torch.zeros(3))
    twice = nn.BatchNorm1d(3)
    stats = RunningStatistics(running_statistics(nn.ModuleDict({"shared": twice})), 1, "trainer.exact")
    with pytest.raises(ConfigError) as err, stats.capturing():
        stats.chunk(0)
        twice(torch.randn(4, 3))
        twice(torch.randn(4, 3))  # a siamese model's second view through the same layer
    assert err.value.key == "trainer.exact" and "shared" in str(err.value) and "runs twice" in str(err.value)
    assert twice.momentum == 0.1  # put back


def test_syncbatchnorm_is_refused_naming_the_layer(tmp_path):
    import distrain

    cfg = load_config(XOR, ["trainer.exact=true", f"run.dir={tmp_path}", "trainer.epochs=1", "wandb.mode=disabled"])
    model = nn.Sequential(nn.Linear(2, 4), nn.SyncBatchNorm(4), nn.Tanh(), nn.Linear(4, 1))
    with pytest.raises(ConfigError) as err:
        distrain.fit(cfg, model=model)
    assert err.value.key == "trainer.exact" and "SyncBatchNorm exact (1)" in str(err.value)


# ------------------------------------------------------------------------------------ real runs

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def data_root():
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from fetch_data import default_root, fetch

    return str(fetch(default_root()))


def _mnist(nproc, run_dir, data_root, *more, **kw):
    """examples/exact_mnist.yaml (pytorch/examples' Net, 4,096 MNIST images, 3 epochs, global batch 96,
    chunks of 8) under torchrun, from the examples folder (the Net is imported by path from there)."""
    args = ["train", "exact_mnist.yaml", f"run.dir={run_dir}", f"data.args.root={data_root}", *more]
    path = os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))
    env = clean_env(PYTHONPATH=path, **kw.pop("env", {}))
    return run_torchrun(nproc, *args, env=env, cwd=EXAMPLES, **kw)


def _figures(run_dir):
    """Every metric figure of metrics.jsonl (not the timings), in order."""
    timing = {"time_s", "train_time_s", "samples_per_s", "timestamp", "step_time_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records(run_dir)]


@pytest.fixture(scope="module")
def mnist_one(tmp_path_factory, data_root):
    run = tmp_path_factory.mktemp("exact-mnist-1")
    result = _mnist(1, run, data_root)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [3, 4])  # 2: the killed run below trains its first 40 steps on 2
def test_mnist_net_with_dropout_is_bitwise_the_same_on_3_and_4_processes(mnist_one, data_root, tmp_path, nproc):
    result = _mnist(nproc, tmp_path, data_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise(newest_weights(mnist_one), newest_weights(tmp_path))
    assert len(records(mnist_one)) == 6 and _figures(tmp_path) == _figures(mnist_one)


@pytest.mark.slow
def test_a_run_killed_on_2_processes_resumes_on_3_bitwise(mnist_one, data_root, tmp_path):
    # 43 steps an epoch; a checkpoint every 20 steps; rank 1 dies after step 50 (epoch 1, mid-epoch).
    killed = _mnist(
        2,
        tmp_path,
        data_root,
        "checkpoint.every_steps=20",
        script="tests/helpers/kill_at_step.py",
        env={"KILL_STEP": "50", "KILL_RANK": "1"},
    )
    assert killed.returncode != 0 and "(exitcode: -9)" in killed.stderr
    resumed = _mnist(3, tmp_path, data_root, "checkpoint.every_steps=20")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming a 2-process checkpoint on 3 processes" in resumed.stderr
    assert_bitwise(newest_weights(mnist_one), newest_weights(tmp_path))
    assert _figures(tmp_path) == _figures(mnist_one)


@pytest.mark.slow
@pytest.mark.parametrize("precision,sizes", [("bf16", (1, 2, 4)), ("fp16", (1, 2))])
def test_xor_with_accumulation_and_mixed_precision_is_bitwise_on_1_2_and_4_processes(tmp_path, precision, sizes):
    """bf16 with accumulation (both at once: one set of runs); fp16 with its gradient scaler (CPU autocast):
    the scale multiplies every chunk's loss alike, the unscale and the overflow check read the exact sum,
    so every rank and every world size takes the same steps with the same scale."""
    more = ["trainer.accumulate_steps=2", f"trainer.precision={precision}"]
    args = ["train", XOR, "trainer.exact=true", "trainer.epochs=5", "log.plots=false", *more]
    runs = {}
    for nproc in sizes:
        run = tmp_path / str(nproc)
        result = (
            run_cli(*args, f"run.dir={run}", fresh=True) if nproc == 1 else run_torchrun(nproc, *args, f"run.dir={run}")
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[nproc] = run
    for nproc in sizes[1:]:
        assert_bitwise(newest_weights(runs[1]), newest_weights(runs[nproc]))
        assert _figures(runs[nproc]) == _figures(runs[1])
    scaler = newest_payload(runs[sizes[-1]])["scaler"]
    assert (scaler is not None) == (precision == "fp16")
    if scaler is not None:
        assert scaler == newest_payload(runs[1])["scaler"] and scaler["scale"] > 1


@pytest.mark.slow
def test_digits_cnn_is_bitwise_on_1_and_3_processes(tmp_path):
    args = ["train", str(REPO / "configs" / "digits_cnn.yaml"), "trainer.exact=true", "trainer.epochs=2"]
    args += ["data.global_batch_size=96", "log.plots=false"]  # 12 chunks of 8: 1, 2, 3, 4, 6 or 12 processes
    one = run_cli(*args, f"run.dir={tmp_path / '1'}", fresh=True)
    three = run_torchrun(3, *args, f"run.dir={tmp_path / '3'}")
    assert one.returncode == 0 and three.returncode == 0, one.stderr[-2000:] + three.stderr[-2000:]
    assert_bitwise(newest_weights(tmp_path / "1"), newest_weights(tmp_path / "3"))
    assert _figures(tmp_path / "3") == _figures(tmp_path / "1")


# ------------------------------------------------------------------------------------ the default mode


@pytest.mark.slow
def test_default_mode_draws_different_dropout_masks_on_each_rank(tmp_path):
    path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    env = clean_env(PYTHONPATH=path, PROBE_DIR=str(tmp_path))
    args = ["train", XOR, f"run.dir={tmp_path / 'run'}", "trainer.epochs=1", "log.plots=false"]
    result = run_torchrun(2, *args, "model.name=helpers.dropout_probe:DropoutNet", "model.args={}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"mask-{r}.pt") for r in (0, 1))
    assert rank0.shape == rank1.shape == (64, 16)  # each rank's half of the first global batch of 128
    assert not torch.equal(rank0, rank1)  # before: the same generator state on every rank, the same mask
    assert 0.3 < (rank0 == 0).float().mean() < 0.7 and 0.3 < (rank1 == 0).float().mean() < 0.7


# ------------------------------------------------------------- BatchNorm and augmentation in workers

RESNET = [str(EXAMPLES / "exact_resnet.py"), str(EXAMPLES / "exact_resnet.yaml")]
RESNET_ARGS = ("trainer.epochs=1", "checkpoint.every_steps=2", "log.plots=false", "checkpoint.keep_last=0")


def _resnet(nproc, run_dir, **kw):
    """examples/exact_resnet.py: a torchvision ResNet-18, RandomResizedCrop and RandomHorizontalFlip in 2
    DataLoader workers per process, 8 chunks of 4 per step, 8 steps an epoch (one here), a checkpoint every 2."""
    if nproc == 1 and "script" not in kw:
        return run_group([PYTHON, *RESNET, f"run.dir={run_dir}", *RESNET_ARGS], env=clean_env(), timeout=600)
    script = kw.pop("script", "examples/exact_resnet.py")
    args = RESNET if script != "examples/exact_resnet.py" else RESNET[1:]
    return run_torchrun(nproc, *args, f"run.dir={run_dir}", *RESNET_ARGS, script=script, timeout=600, **kw)


@pytest.fixture(scope="module")
def resnet_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact-resnet")
    for nproc in (1, 4):
        result = _resnet(nproc, root / str(nproc))
        assert result.returncode == 0, result.stderr[-3000:]
    # On 2 processes, rank 1 SIGKILLed after step 7 (mid-epoch: the newest checkpoint is step 6's); then
    # resumed on 4.
    killed = _resnet(
        2, root / "2-4", script="tests/helpers/kill_at_step.py", env=clean_env(KILL_STEP="7", KILL_RANK="1")
    )
    assert killed.returncode != 0 and "(exitcode: -9)" in killed.stderr
    two = {p.name: torch.load(p, weights_only=False) for p in (root / "2-4" / "checkpoints").glob("step-*.pt")}
    resumed = _resnet(4, root / "2-4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming a 2-process checkpoint on 4 processes" in resumed.stderr
    return root, two


@pytest.mark.slow
def test_resnet18_with_batchnorm_and_augmentation_in_workers_is_bitwise_on_1_2_and_4_processes(resnet_runs):
    root, two = resnet_runs
    one = torch.load(root / "1" / "model.pt")
    assert any("running_mean" in k for k in one) and int(one["bn1.num_batches_tracked"]) == 8 * 8  # 8 chunks a step
    assert_bitwise(one, torch.load(root / "4" / "model.pt"))  # weights and BatchNorm buffers
    assert _figures(root / "4") == _figures(root / "1") and len(records(root / "1")) == 2  # train, test
    # The 2-process run's checkpoints (steps 2, 4, 6) are the 1-process run's, bitwise.
    assert sorted(two) == ["step-00000002.pt", "step-00000004.pt", "step-00000006.pt"]
    for name, payload in two.items():
        assert_bitwise(torch.load(root / "1" / "checkpoints" / name, weights_only=False)["model"], payload["model"])


@pytest.mark.slow
def test_resnet18_killed_on_2_processes_and_resumed_on_4_ends_as_the_1_process_run(resnet_runs):
    root, _ = resnet_runs
    assert_bitwise(torch.load(root / "1" / "model.pt"), torch.load(root / "2-4" / "model.pt"))
    assert _figures(root / "2-4") == _figures(root / "1")
