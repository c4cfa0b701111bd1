"""Bad data files stop before training with exit 2 and a message naming the file (and line, column or
image), for the CSV table, the annotations CSV and image folders."""

import pytest
import torch
from helpers.runs import run_cli

from distrain.data.datasets import csv
from distrain.data.image_files import encode_png
from distrain.data.images import csv_images, image_folder
from distrain.errors import UserError

GOOD = "a,b,label\n1,2,cat\n3,4,dog\n5,6,cat\n"


@pytest.mark.parametrize(
    "text, words",
    [
        ("a,b,label\n1,2,cat\n3,dog\n", "line 3: 2 cells, the header has 3"),
        ("a,b,label\n1,2,cat\n3,,dog\n", "line 3, column 'b': the cell is empty"),
        ("a,b,label\n1,2,cat\n\n3,x7,dog\n", "line 4, column 'b': 'x7' is not a number"),
        ("a,b,label\n1,nan,cat\n3,4,dog\n", "line 2, column 'b': 'nan' is not a finite number"),
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("a,b,label\n", "has a header row but no data rows"),
    ],
)
def test_bad_csv_cells_are_named(tmp_path, text, words):
    path = tmp_path / "table.csv"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        csv(path=str(path))
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_a_label_outside_the_classes_is_named(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text(GOOD + "7,8,cow\n")
    with pytest.raises(UserError) as caught:
        csv(path=str(path), classes=["cat", "dog"])
    assert f"{path}, line 5, column 'label': label 'cow' is not one of data.args.classes" in str(caught.value)
    data = csv(path=str(path), classes=["dog", "cat", "cow", "hen"], test_fraction=0.25)
    assert data.num_classes == 4  # the order given, classes absent from the file included


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(torch.full((3, 8, 8), value, dtype=torch.uint8)))


def test_image_folder_with_a_corrupt_image_or_an_empty_class(tmp_path):
    for cls in ("ants", "bees"):
        for i in range(3):
            _png(tmp_path / "imgs" / cls / f"{i}.png", 40 * i)
    assert image_folder(root=str(tmp_path / "imgs")).num_classes == 2
    bad = tmp_path / "imgs" / "bees" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(UserError, match=f"{bad} is not a readable image"):
        image_folder(root=str(tmp_path / "imgs"))
    _png(bad)
    (tmp_path / "imgs" / "wasps").mkdir()
    with pytest.raises(UserError, match=f"class folder {tmp_path / 'imgs' / 'wasps'} holds no image"):
        image_folder(root=str(tmp_path / "imgs"))


def test_annotations_csv_problems_are_named(tmp_path):
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", 30 * i)
    notes = tmp_path / "labels.csv"
    notes.write_text("file,label\n0.png,0\n1.png,1\n2.png,0\n3.png,1\n")
    assert csv_images(path=str(notes), root=str(tmp_path / "imgs"), classes=["0", "1"]).num_classes == 2
    (tmp_path / "imgs" / "2.png").write_text("not an image")
    with pytest.raises(UserError, match="2.png is not a readable image"):
        csv_images(path=str(notes), root=str(tmp_path / "imgs"))
    notes.write_text("file,label\n0.png,0\n1.png\n")
    with pytest.raises(UserError, match="line 3: 1 cells"):
        csv_images(path=str(notes), root=str(tmp_path / "imgs"))


def test_the_cli_exits_2_naming_the_file_and_line(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text(GOOD + "7,?,dog\n")
    r = run_cli(
        "train",
        "configs/wine.yaml",
        "data.name=csv",
        f"data.args={{path: {path}}}",
        f"run.dir={tmp_path / 'r'}",
        "wandb.mode=disabled",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{path}, line 5, column 'b': '?' is not a number" in r.stderr
    assert not (tmp_path / "r").exists()  # checked before the run directory is made


def test_a_failed_download_is_one_message(tmp_path, monkeypatch):
    import torchvision

    from distrain.data.images import mnist

    # A mirror that refuses connections: the failure of a download, without depending on the network.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(UserError) as caught:
        mnist(root=str(tmp_path), download=True)
    message = str(caught.value)
    assert message.startswith("data.args.download: downloading data.name=mnist into ")
    assert "127.0.0.1:9" in message and "data.args.download=false" in message
