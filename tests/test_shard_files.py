"""distrain's own file shards (distrain/data/shard_files.py): written from any map-style Dataset, read back
equal through the shards protocol (read_range, open_shard with a start, shard_size) and by index; the
in-memory image sets' uint8 images with their batch transform recorded, read back bit for bit; atomic
writes; the `shards` data set by name and the `distrain shards` command."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from helpers.runs import write_fashion_mnist
from torch.utils.data import DataLoader, Dataset, TensorDataset

import distrain
from distrain.cli import main
from distrain.config.parse import load_config
from distrain.data.datasets import xor
from distrain.data.images import ImageTransform, fashion_mnist
from distrain.data.shard_files import FileShards, write_shards, write_splits
from distrain.data.shards import is_sharded, read_range, shard_sizes, takes_start
from distrain.data.splits import build_splits
from distrain.errors import ConfigError, UserError

REPO_XOR = "configs/xor.yaml"


def shards_config(root):
    return load_config(
        {"data": {"name": "shards", "args": {"root": root}, "global_batch_size": 8}, "trainer": {"epochs": 1}}
    ).data


def tensors(n=23, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, generator=generator), torch.randint(0, 4, (n,), generator=generator))


def test_a_tensor_dataset_reads_back_equal_through_every_access(tmp_path):
    data = tensors()
    files = FileShards(write_shards(data, tmp_path / "s", samples_per_shard=7, num_classes=4))
    assert is_sharded(files) and takes_start(files) and files.shards() == [f"shard-0000{i}" for i in range(4)]
    assert shard_sizes(files) == [7, 7, 7, 2] and len(files) == 23 and files.num_classes == 4
    x, y = data.tensors
    got_x, got_y = files.read_range("shard-00001", 2, 6)
    assert torch.equal(got_x, x[9:13]) and torch.equal(got_y, y[9:13]) and got_y.dtype == torch.int64
    from_three = list(files.open_shard("shard-00002", 3))
    assert len(from_three) == 4 and all(torch.equal(s[0], x[17 + i]) for i, s in enumerate(from_three))
    assert all(torch.equal(files[i][0], x[i]) and files[i][1] == y[i] for i in range(-23, 23))
    with pytest.raises(IndexError):
        files[23]
    # A DataLoader's batch across shards (through __getitems__), in a worker (the maps are not pickled).
    copy = pickle.loads(pickle.dumps(files))
    (batch_x, batch_y) = next(iter(DataLoader(copy, batch_size=23, shuffle=False, num_workers=1)))
    assert torch.equal(batch_x, x) and torch.equal(batch_y, y)
    assert torch.equal(torch.stack([s[0] for s in files]), x)


class DictSamples(Dataset):
    """Samples as dicts, numbers included, read one at a time (the generic writer's path)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"features": torch.full((2,), float(i)), "id": i, "label": i % 3}


def test_dict_samples_are_written_sample_by_sample_and_read_as_dicts(tmp_path):
    files = FileShards(write_shards(DictSamples(10), tmp_path / "d", samples_per_shard=4))
    index = json.loads((tmp_path / "d" / "index.json").read_text())
    assert index["structure"] == "dict" and [f["name"] for f in index["fields"]] == ["features", "id", "label"]
    batch = read_range(files, "shard-00001", 1, 3)
    assert torch.equal(batch["id"], torch.tensor([5, 6])) and torch.equal(
        batch["features"][:, 0], torch.tensor([5.0, 6])
    )
    assert files[9]["label"] == 0 and files[9]["id"] == 9


@pytest.mark.parametrize("normalize", [True, False])
def test_fashion_mnist_shards_hold_uint8_and_read_back_the_in_memory_values_bit_for_bit(tmp_path, normalize):
    write_fashion_mnist(tmp_path / "data", 50, 20)
    data = fashion_mnist(root=str(tmp_path / "data"), transform=ImageTransform(normalize=normalize))
    write_splits(data, tmp_path / "shards", samples_per_shard=16)
    stored = np.load(tmp_path / "shards" / "train" / "shard-00000.0.npy", mmap_mode="r")
    assert stored.dtype == np.uint8 and stored.shape == (16, 1, 28, 28)
    streamed = build_splits(shards_config(str(tmp_path / "shards")), 0)
    assert streamed.num_classes == 10
    for split in ("train", "test"):
        memory, files = getattr(data, split), getattr(streamed, split)
        images, labels = memory.tensors
        expected = memory.batch_transform(images)  # what the in-memory path trains on
        got = torch.cat([files.read_range(s, 0, files.shard_size(s))[0] for s in files.shards()])
        assert got.dtype == torch.float32 and torch.equal(got, expected), split
        assert torch.equal(torch.stack([files[i][0] for i in range(len(files))]), expected)
        assert torch.equal(torch.stack([files[i][1] for i in range(len(files))]), labels)
    raw_files = FileShards(tmp_path / "shards" / "train", transform=False)
    stored_batch = raw_files.read_range("shard-00000", 0, 4)[0]
    assert stored_batch.dtype == torch.uint8 and torch.equal(stored_batch, data.train.tensors[0][:4])
    assert torch.equal(raw_files.transforms[0](stored_batch), data.train.batch_transform(data.train.tensors[0][:4]))


def test_random_augmentation_is_refused_not_silently_dropped(tmp_path):
    from distrain.data.in_memory import BatchTransform, ImageTensors

    images = ImageTensors(
        torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), BatchTransform(flip=True)
    )
    with pytest.raises(UserError, match="random crops or flips"):
        write_shards(images, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


class FailsAt(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i == 7:
            raise RuntimeError("disk went away")
        return torch.zeros(2), 0


def test_writes_are_atomic_and_never_over_other_files(tmp_path):
    with pytest.raises(RuntimeError, match="disk went away"):
        write_shards(FailsAt(), tmp_path / "out", samples_per_shard=3)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary folder is left
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not an empty folder: it is never written over"):
        write_shards(tensors(), tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert len(FileShards(write_shards(tensors(), tmp_path / "empty"))) == 23  # an empty folder is replaced


def test_samples_that_are_not_arrays_are_refused_by_name(tmp_path):
    class Named(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"x": torch.zeros(2), "name": f"sample{i}"}

    with pytest.raises(UserError, match="field name of the samples is list"):
        write_shards(Named(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_the_shards_data_set_names_a_missing_folder_and_a_bad_index(tmp_path):
    cfg = shards_config(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as info:
        build_splits(cfg, 0)
    assert info.value.key == "data.args.root" and "distrain shards" in str(info.value)
    write_shards(tensors(), tmp_path / "s" / "train")
    index = tmp_path / "s" / "train" / "index.json"
    index.write_text(index.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(UserError, match="version 99"):
        FileShards(tmp_path / "s" / "train")


def test_distrain_shards_writes_the_configs_splits(tmp_path, capsys):
    out = tmp_path / "xor_shards"
    args = [
        "shards",
        REPO_XOR,
        str(out),
        "--samples-per-shard",
        "300",
        "data.args.num_train=1000",
        "data.val_fraction=0.2",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    expected = xor(num_train=1000, num_test=500, noise_std=0.1, seed=load_config(REPO_XOR).seed)
    streamed = build_splits(shards_config(str(out)), 0)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"] and streamed.num_classes == 2
    for split in ("train", "test"):
        files, memory = getattr(streamed, split), getattr(expected, split)
        assert len(files) == len(memory)  # the whole split: the validation hold-out is the training run's
        assert torch.equal(torch.stack([s[0] for s in files]), memory.tensors[0])
        assert torch.equal(torch.stack([s[1] for s in files]), memory.tensors[1])
    # The same folder again: refused in one line and a hint, exit 2, no traceback, nothing changed.
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("distrain: error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert main(["shards", REPO_XOR, str(tmp_path / "x"), "--samples-per-shard", "0"]) == 2
    assert "--samples-per-shard" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_test_split_of_shards_is_evaluated_through_the_map_style_path(tmp_path):
    x, y = tensors(200, 1).tensors
    data = TensorDataset(x, y)
    files = FileShards(write_shards(data, tmp_path / "test", samples_per_shard=64))
    results = []
    for name, test in (("memory", data), ("files", files)):
        torch.manual_seed(0)
        cfg = load_config(
            {
                "run": {"dir": str(tmp_path / name)},
                "data": {"global_batch_size": 32},
                "trainer": {"epochs": 1},
                "optim": {"name": "sgd", "lr": 0.1},
                "log": {"plots": False},
                "wandb": {"mode": "disabled"},
            }
        )
        result = distrain.fit(cfg, model=torch.nn.Linear(3, 4), train_data=data, test_data=test)
        results.append((result["test_loss"], result["test_accuracy"], result.samples["test"]))
    assert results[0] == results[1] and results[1][2] == 200
