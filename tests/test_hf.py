"""Hugging Face `datasets` (distrain/data/hf.py): an IterableDataset read through the shards protocol, each
shard exactly one of its sources and every row once; local parquet and JSON streams; the `huggingface`
data set by name; a map-style Dataset trained through distrain.fit; `datasets` never imported by distrain
itself."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

import distrain
from distrain.data.hf import HFShards, as_sharded, is_hf_stream, num_classes_of
from distrain.data.shards import is_sharded, read_range, shard_sizes, takes_start
from distrain.data.splits import build_splits

datasets = pytest.importorskip("datasets")


def table(n=22):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, 2, generator=generator)
    labels = ((features[:, 0] > 0) ^ (features[:, 1] > 0)).long()
    return (
        features,
        labels,
        datasets.Dataset.from_dict({"id": list(range(n)), "features": features.tolist(), "label": labels.tolist()}),
    )


def ids(samples):
    return [int(s["id"]) for s in samples]


def test_distrain_never_imports_datasets_itself():
    code = (
        "import sys, torch, distrain, distrain.data.hf, distrain.data.shard_files\n"
        "from distrain.data.hf import as_sharded\n"
        "data = torch.utils.data.TensorDataset(torch.zeros(2))\n"
        "assert as_sharded(data) is data\n"
        "assert 'datasets' not in sys.modules, 'datasets was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_shard_of_an_iterable_dataset_is_one_of_its_sources_and_every_row_comes_once():
    _, _, ds = table()
    stream = ds.to_iterable_dataset(num_shards=4)
    shards = as_sharded(stream)
    assert isinstance(shards, HFShards) and is_sharded(shards) and takes_start(shards) and is_hf_stream(stream)
    assert shards.shards() == [0, 1, 2, 3]
    read = [ids(shards.open_shard(i)) for i in shards.shards()]
    assert read == [ids(stream.shard(4, i)) for i in range(4)]
    assert read == [list(range(0, 6)), list(range(6, 12)), list(range(12, 17)), list(range(17, 22))]
    assert shard_sizes(shards) == [6, 6, 5, 5]
    assert ids(shards.open_shard(2, 3)) == [15, 16] and ids(shards.open_shard(3, 5)) == []
    batch = read_range(shards, 1, 2, 5)
    assert torch.equal(batch["id"], torch.tensor([8, 9, 10])) and batch["features"].shape == (3, 2)
    assert torch.equal(batch["features"], torch.tensor(ds[8:11]["features"]))
    assert read_range(shards, 0, 3, 3)["features"].shape == (0, 2)
    sample = next(shards.open_shard(0))
    assert isinstance(sample["features"], torch.Tensor) and sample["label"].dtype == torch.int64
    assert ids(pickle.loads(pickle.dumps(shards))) == list(range(22))  # __iter__: every shard in order


class WorkerReadsItsShard(IterableDataset):
    """Each DataLoader worker reads the shard of its own index, as distrain's planner deals them."""

    def __init__(self, shards):
        self.shards = shards

    def __iter__(self):
        yield from self.shards.open_shard(get_worker_info().id)


def test_a_shard_read_inside_a_dataloader_worker_is_read_whole():
    # An HF IterableDataset iterated in a worker splits itself over the workers again: worker 1 would read
    # nothing of a one-source shard. open_shard reads the shard whole wherever it runs.
    _, _, ds = table()
    shards = HFShards(ds.to_iterable_dataset(num_shards=4))
    loader = DataLoader(WorkerReadsItsShard(shards), batch_size=None, num_workers=2)
    assert sorted(ids(loader)) == list(range(12))


def test_local_parquet_and_json_files_stream_one_shard_per_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(3):
        pq.write_table(
            pa.table({"id": list(range(10 * i, 10 * i + 4)), "x": [1.0] * 4, "label": [i] * 4}),
            tmp_path / f"p{i}.parquet",
        )
        rows = [json.dumps({"id": j, "x": [float(j), 1.0], "label": j % 2}) for j in range(10 * i, 10 * i + 3)]
        (tmp_path / f"j{i}.jsonl").write_text("\n".join(rows) + "\n")
    for kind, pattern, sizes in (("parquet", "p*.parquet", [4, 4, 4]), ("json", "j*.jsonl", [3, 3, 3])):
        stream = datasets.load_dataset(kind, data_files=str(tmp_path / pattern), split="train", streaming=True)
        shards = as_sharded(stream)
        assert shards.shards() == [0, 1, 2] and shard_sizes(shards) == sizes, kind
        read = [ids(shards.open_shard(i)) for i in shards.shards()]
        assert sorted(sum(read, [])) == sorted(ids(stream)) and len(set(sum(read, []))) == sum(sizes), kind
        assert all(len({j // 10 for j in part}) == 1 for part in read), kind  # one file per shard


def huggingface_config(tmp_path, **args):
    return distrain.load_config(
        {
            "data": {"name": "huggingface", "args": args, "global_batch_size": 8},
            "trainer": {"epochs": 1},
        }
    ).data


def test_the_huggingface_data_set_by_name_map_style_and_streaming(tmp_path):
    for split, n in (("train", 12), ("test", 5)):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"id": i, "features": [float(i), 0.5], "label": i % 3}) + "\n" for i in range(n))
        )
    files = {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")}
    data = build_splits(huggingface_config(tmp_path, path="json", data_files=files, num_classes=3), 0)
    assert len(data.train) == 12 and len(data.test) == 5 and data.num_classes == 3
    assert torch.equal(data.train[4]["features"], torch.tensor([4.0, 0.5]))
    from distrain.data.hf import huggingface

    streamed = huggingface(path="json", data_files=files, streaming=True, columns=["features", "label"])
    assert isinstance(streamed.train, HFShards) and sorted(next(streamed.train.open_shard(0))) == ["features", "label"]
    assert sum(shard_sizes(streamed.test)) == 5
    with pytest.raises(distrain.ConfigError) as info:
        huggingface(path="json", data_files=files, test_split="validation")
    assert info.value.key == "data.args.test_split" and "'validation'" in str(info.value)


def test_num_classes_from_a_class_label_column():
    ds = datasets.Dataset.from_dict(
        {"x": [1, 2], "label": [0, 1]},
        features=datasets.Features({"x": datasets.Value("int64"), "label": datasets.ClassLabel(names=["a", "b", "c"])}),
    )
    assert num_classes_of(ds) == 3 and num_classes_of(ds, "x") is None


class Net(nn.Module):
    """A model for dict samples: takes `features` (and the `id` column the samples also carry)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, features, id=None):
        return self.layers(features)


def test_a_map_style_hf_dataset_trains_like_the_same_tensors(tmp_path):
    features, labels, ds = table(200)
    runs = {}
    for name, data in (("hf", ds.with_format("torch")), ("tensors", TensorDataset(features, labels))):
        torch.manual_seed(0)
        model = Net()
        cfg = distrain.load_config(
            {
                "seed": 0,
                "run": {"dir": str(tmp_path / name)},
                "data": {"global_batch_size": 32},
                "optim": {"name": "sgd", "lr": 0.5},
                "trainer": {"epochs": 2},
                "log": {"plots": False},
                "wandb": {"mode": "disabled"},
            }
        )
        result = distrain.fit(cfg, model=model, train_data=data, test_data=data)
        runs[name] = (result["test_loss"], result["test_accuracy"], result.samples["test"], model.state_dict())
    (hf_loss, hf_acc, hf_n, hf_weights), (loss, acc, n, weights) = runs["hf"], runs["tensors"]
    # The same samples in the same steps: dict batches (model(**inputs), the target found by key) train
    # bitwise like the tensor fast path.
    assert hf_n == n == 200 and (hf_loss, hf_acc) == (loss, acc)
    assert all(torch.equal(hf_weights[k], weights[k]) for k in weights)
