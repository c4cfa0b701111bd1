"""Image and file data sets through the real loaders, on small files written here in the real formats
(MNIST/FashionMNIST idx, CIFAR-10 python pickle batches, a folder of PNGs, an annotations CSV, a tabular
CSV), trained in 1 and 2 processes; torchvision models and fine-tuning; the digits config."""

import pickle
import struct

import numpy as np
import pytest
import torch
from helpers.runs import assert_bitwise, last_record, newest_payload, newest_weights, records, run_cli, run_torchrun

RNG = np.random.default_rng(0)


def class_images(labels, shape):
    """uint8 images whose brightness pattern depends on the class, so a short run can learn something."""
    images = RNG.integers(0, 60, size=(len(labels), *shape), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, ..., : (label + 1) * shape[-1] // 10 or 1] += 150
    return images


def write_idx(folder, prefix, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
    )


def write_mnist(root, folder_name):
    raw = root / folder_name / "raw"
    for prefix, n in (("train", 96), ("t10k", 33)):
        labels = RNG.integers(0, 10, n)
        write_idx(raw, prefix, class_images(labels, (28, 28)), labels)


def write_cifar(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 16) for i in range(1, 6)] + [("test_batch", 21)]:
        labels = RNG.integers(0, 10, n)
        data = class_images(labels, (3, 32, 32)).reshape(n, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def write_png_folder(root, per_class=12, size=16):
    from PIL import Image

    names = []
    for label, cls in enumerate(("ants", "bees")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = class_images([label * 9], (size, size, 3))[0]
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
            names.append((f"{cls}/{i}.png", label))
    return names


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    write_mnist(root, "MNIST")
    write_mnist(root, "FashionMNIST")
    write_cifar(root)
    names = write_png_folder(root / "pngs")
    (root / "annotations.csv").write_text("file,label\n" + "".join(f"{n},{l}\n" for n, l in names))
    return root


CASES = {
    "mnist": ["configs/mnist_cnn.yaml", "data.args.download=false"],
    "fashion_mnist": ["configs/fashion_mnist.yaml", "data.args.download=false", "model.args.hidden_sizes=[32]"],
    "cifar10": ["configs/cifar10_lenet.yaml", "data.args.download=false", "data.args.transform.flip=false"],
    "image_folder": [
        "configs/image_folder.yaml",
        "model.name=cifar_lenet",
        "model.args={}",
        "data.args.transform.image_size=32",
    ],
    "csv_images": [
        "configs/image_folder.yaml",
        "data.name=csv_images",
        "model.name=cifar_lenet",
        "model.args={}",
        "data.args.transform.image_size=32",
    ],
}
SIZES = {
    "mnist": (96, 33),
    "fashion_mnist": (96, 33),
    "cifar10": (80, 21),
    "image_folder": (19, 5),
    "csv_images": (19, 5),
}


def case_args(name, files, run_dir):
    root = files / "pngs" if name in ("image_folder", "csv_images") else files
    args = [
        *CASES[name],
        f"data.args.root={root}",
        f"run.dir={run_dir}",
        "trainer.epochs=2",
        "data.num_workers=0",
        "data.global_batch_size=16",
        "data.eval_batch_size=8",
        "wandb.mode=disabled",
        "log.plots=false",
    ]
    if name == "csv_images":
        args.append(f"data.args.path={files / 'annotations.csv'}")
    return args


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_real_loaders_train_in_one_and_two_processes(files, tmp_path, name):
    # No random augmentation in these: trainer.exact makes 1 and 2 processes bitwise equal (2 chunks of 8).
    exact = ["trainer.exact=true"] if name in ("mnist", "fashion_mnist", "cifar10") else []
    one = run_cli("train", *case_args(name, files, tmp_path / "one"), *exact)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_torchrun(2, "train", *case_args(name, files, tmp_path / "two"), *exact)
    assert two.returncode == 0, two.stderr[-3000:]
    train_n, test_n = SIZES[name]
    for run in ("one", "two"):
        # every sample once, any world size
        assert [r["samples"] for r in records(tmp_path / run)] == [train_n, test_n] * 2
    if exact:
        assert_bitwise(newest_weights(tmp_path / "one"), newest_weights(tmp_path / "two"))
        assert [r["loss"] for r in records(tmp_path / "one")] == [r["loss"] for r in records(tmp_path / "two")]


def test_dataloader_workers_and_prefetch(files, tmp_path):
    result = run_cli(
        "train",
        *case_args("mnist", files, tmp_path),
        "data.num_workers=2",
        "data.persistent_workers=true",
        "data.prefetch_factor=2",
        fresh=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_missing_files_name_the_folder(tmp_path):
    result = run_cli(
        "train",
        "configs/cifar10_lenet.yaml",
        "data.args.download=false",
        f"data.args.root={tmp_path}",
        f"run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2 and f"missing in {tmp_path}/cifar-10-batches-py" in result.stderr
    assert "data_batch_1" in result.stderr and "Traceback" not in result.stderr


def test_tabular_csv_with_the_label_first(tmp_path):
    import sklearn.datasets

    wine = sklearn.datasets.load_wine()
    rows = np.column_stack([wine.target + 1, wine.data])  # the UCI wine file: class (1-3) first, no header
    path = tmp_path / "wine.data"
    np.savetxt(path, rows, delimiter=",", fmt="%g")
    result = run_cli(
        "train",
        "configs/wine.yaml",
        "data.name=csv",
        f"data.args.path={path}",
        "data.args.header=false",
        "data.args.label_index=0",
        f"run.dir={tmp_path / 'run'}",
        "wandb.mode=disabled",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = last_record(tmp_path / "run", "test")
    assert last["samples"] == 36 and last["accuracy"] >= 0.9
    bad = run_cli(
        "train",
        "configs/wine.yaml",
        "data.name=csv",
        f"data.args.path={path}",
        "data.args.label_column=class",
        f"run.dir={tmp_path / 'bad'}",
    )
    assert bad.returncode == 2 and "'data.args.label_column'" in bad.stderr


@pytest.mark.slow
def test_digits_cnn_reaches_95_percent(tmp_path):
    result = run_cli("train", "configs/digits_cnn.yaml", f"run.dir={tmp_path}", "wandb.mode=disabled")
    assert result.returncode == 0, result.stderr[-2000:]
    last = last_record(tmp_path, "test")
    assert last["samples"] == 359 and last["accuracy"] >= 0.95


@pytest.mark.slow
def test_finetune_freezes_the_backbone_and_trains_the_head(files, tmp_path):
    import torchvision

    pretrained = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pretrained)
    args = [
        "configs/resnet18_finetune.yaml",
        f"data.args.root={files / 'pngs'}",
        f"model.args.pretrained={pretrained}",
        "data.args.transform.image_size=32",
        "data.args.transform.crop=28",
        "trainer.epochs=2",
        f"run.dir={tmp_path / 'run'}",
        "data.num_workers=0",
        "wandb.mode=disabled",
        "log.plots=false",
    ]
    result = run_cli("train", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    before = torch.load(pretrained, weights_only=True)
    after = newest_weights(tmp_path / "run")
    frozen = [k for k in before if not k.startswith("fc.")]
    assert len(frozen) > 100 and all(torch.equal(before[k], after[k]) for k in frozen)  # BN statistics too
    assert not torch.equal(before["fc.weight"][:1], after["fc.weight"])  # the head was replaced and trained
    assert after["fc.weight"].shape == (1, 512)  # two classes: one logit with BCE
    optimizer_params = newest_payload(tmp_path / "run")["optimizer"]["param_groups"][0]["params"]
    assert len(optimizer_params) == 2  # only the new head's weight and bias are trained
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    bad = run_cli("train", *args[:-4], f"model.args.pretrained={wrong}", f"run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "'model.args.pretrained'" in bad.stderr and "does not match" in bad.stderr
