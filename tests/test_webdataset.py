"""WebDataset-style tar shards (distrain/data/webdataset.py): written from an image set and read back equal,
counted from the tar headers alone, opened mid-shard without decoding what is skipped; tars written by
hand (a sub-folder in the keys, .txt labels, other files); the `webdataset` data set by name and
`distrain shards --format webdataset`."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
from helpers.runs import write_fashion_mnist

import distrain.data.webdataset as wds
from distrain.cli import main
from distrain.config.registry import call, resolve
from distrain.data.image_files import encode_png
from distrain.data.images import ImageTransform, fashion_mnist
from distrain.data.in_memory import BatchTransform, ImageTensors
from distrain.data.shards import is_sharded, shard_sizes, takes_start
from distrain.data.splits import as_datasets
from distrain.data.webdataset import TarShards, sample_key, write_tar_shards
from distrain.errors import ConfigError, UserError


def images(n=11, channels=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, 28, 28), dtype=torch.uint8, generator=generator)
    return ImageTensors(x, torch.randint(0, 10, (n,), generator=generator), BatchTransform())


def by_name(**args):
    """The `webdataset` data set as a config names it (resolved and called like any built-in; build_splits
    itself reads streams once the trainer side lands)."""
    return as_datasets(call(resolve("data", "webdataset", "data.name"), args, "data.args"), "webdataset")


@pytest.mark.parametrize("channels", [1, 3])
def test_an_image_set_written_as_tars_reads_back_equal(tmp_path, channels):
    data = images(channels=channels)
    write_tar_shards(data, tmp_path / "tars", samples_per_shard=4)
    shards = TarShards(sorted((tmp_path / "tars").glob("*.tar"), reverse=True))
    assert (
        is_sharded(shards)
        and takes_start(shards)
        and [s.rsplit("/", 1)[1] for s in shards.shards()]
        == [
            "shard-00000.tar",
            "shard-00001.tar",
            "shard-00002.tar",
        ]
    )
    assert shard_sizes(shards) == [4, 4, 3]
    read = list(shards)  # every shard in order
    x, y = data.tensors
    assert all(torch.equal(image, x[i]) and label == y[i] for i, (image, label) in enumerate(read))
    assert len(read) == 11 and read[0][1].dtype == torch.int64
    from_two = list(shards.open_shard(shards.shards()[1], 2))
    assert len(from_two) == 2 and torch.equal(from_two[0][0], x[6]) and torch.equal(from_two[1][0], x[7])


def test_counting_and_skipping_decode_nothing(tmp_path, monkeypatch):
    write_tar_shards(images(), tmp_path / "tars", samples_per_shard=6)
    decoded = []
    real = wds.decode
    monkeypatch.setattr(wds, "decode", lambda *args: decoded.append(args[2]) or real(*args))
    shards = TarShards(list((tmp_path / "tars").glob("*.tar")))
    assert shard_sizes(shards) == [6, 5] and decoded == []
    assert len(list(shards.open_shard(shards.shards()[0], 4))) == 2
    assert [d.rsplit(":", 1)[1] for d in decoded] == ["00000004.png", "00000005.png"]


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_hand_written_tars_by_name_with_the_in_memory_values(tmp_path):
    """Keys with a folder and dots after the stem, .txt labels, other files beside them; the `webdataset`
    data set by a glob, normalised exactly as the in-memory FashionMNIST path normalises."""
    data = images(n=6)
    x, y = data.tensors
    (tmp_path / "set").mkdir()
    for part in range(2):
        with tarfile.open(tmp_path / "set" / f"part-{part}.tar", "w") as tar:
            for i in range(3 * part, 3 * part + 3):
                add(tar, f"imgs/{i:04d}.meta.json", b"{}")
                add(tar, f"imgs/{i:04d}.img.png", encode_png(x[i]))
                add(tar, f"imgs/{i:04d}.txt", f" {int(y[i])}\n".encode())
    assert sample_key("imgs/0001.img.png") == ("imgs/0001", "img.png")
    streamed = by_name(
        train=str(tmp_path / "set" / "part-*.tar"),
        image_key="img.png",
        label_key="txt",
        num_classes=10,
        transform={"mean": [0.2860], "std": [0.3530]},
    )
    assert streamed.num_classes == 10 and streamed.test is None
    samples = list(streamed.train)
    expected = BatchTransform(mean=(0.2860,), std=(0.3530,))(x)
    assert torch.equal(torch.stack([s[0] for s in samples]), expected)  # bitwise the in-memory path's values
    assert torch.equal(torch.stack([s[1] for s in samples]), y)


def test_bad_tars_are_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        by_name(train=str(tmp_path))
    assert info.value.key == "data.args.train" and "names no .tar file" in str(info.value)
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add(tar, "0001.png", encode_png(images(1).tensors[0][0]))
        add(tar, "0001.json", b"{}")
        add(tar, "0002.png", encode_png(images(1).tensors[0][0]))
        add(tar, "0002.cls", b"cat")
    shards = TarShards([str(tmp_path / "a.tar")])
    with pytest.raises(UserError, match=r"sample '0001' of .*a.tar has no .cls file \(it has: json, png\)"):
        next(shards.open_shard(shards.shards()[0]))
    with pytest.raises(UserError, match=r"the label of sample '0002' .* is b'cat', not an integer"):
        next(shards.open_shard(shards.shards()[0], 1))
    with pytest.raises(UserError, match="is not \\(uint8 image"):
        write_tar_shards(torch.utils.data.TensorDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_distrain_shards_format_webdataset_writes_what_the_webdataset_set_reads(tmp_path, capsys):
    root = write_fashion_mnist(tmp_path / "data", 30, 12)
    out = tmp_path / "tars"
    overrides = [f"data.args.root={root}", "data.args.download=false"]
    args = ["shards", "configs/fashion_mnist.yaml", str(out), "--format", "webdataset", "--samples-per-shard", "8"]
    assert main(args + overrides) == 0 and capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"shard-0000{i}.tar" for i in range(4)]
    memory = fashion_mnist(root=str(root), transform=ImageTransform(normalize=False))
    streamed = by_name(train=str(out / "train"), test=str(out / "test"))
    for split in ("train", "test"):
        images_, labels = getattr(memory, split).tensors
        samples = list(getattr(streamed, split))
        assert torch.equal(torch.stack([s[0] for s in samples]), getattr(memory, split).batch_transform(images_))
        assert torch.equal(torch.stack([s[1] for s in samples]), labels)
