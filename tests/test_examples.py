"""The shipped examples (distrain.examples) and the starter (distrain.starter): found by name, copied out,
the same set in a clone and in a built wheel; and the package as a user installs it: the sdist and the wheel
built, the wheel installed into a fresh virtual environment, and a shipped example trained from an empty
folder in one process and under torchrun x2."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers.runs import PYTHON, REPO, clean_env, run_cli, run_group

from distrain import examples
from distrain.errors import UserError
from distrain.starter import write_starter
from distrain.version import __version__


def repo_files() -> list[str]:
    return sorted(
        p.relative_to(REPO).as_posix()
        for folder in ("configs", "examples", "slurm", "launch")
        for p in (REPO / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    )


def test_a_clone_ships_its_own_folders():
    assert examples.root() == REPO
    assert examples.files() == repo_files()
    assert "configs/xor.yaml" in examples.files() and "slurm/train.sbatch" in examples.files()
    assert examples.config_names() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


def test_setup_py_copies_the_folders_distrain_examples_names():
    tree = ast.parse((REPO / "setup.py").read_text())
    folders = next(
        ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "FOLDERS"
    )
    assert folders == examples.FOLDERS


def test_a_name_that_is_not_a_file_is_a_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert examples.resolve_config("xor") == str(REPO / "configs" / "xor.yaml")
    assert examples.resolve_config("xor.yaml") == str(REPO / "configs" / "xor.yaml")
    (tmp_path / "xor.yaml").write_text("seed: 1\n")
    assert examples.resolve_config("xor.yaml") == "xor.yaml"  # a file of the user's own comes first
    assert examples.resolve_config("configs/nope.yaml") == "configs/nope.yaml"  # the loader names it
    with pytest.raises(UserError, match=r"'xr' is neither a file nor a shipped config: .*wine, xor, xor_linear"):
        examples.resolve_config("xr")


def test_an_unknown_name_is_one_line_and_exit_2(tmp_path):
    result = run_cli("train", "xr", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "shipped config" in result.stderr and "xor" in result.stderr


def test_distrain_train_by_name_trains_the_shipped_config(tmp_path):
    result = run_cli("train", "xor", "trainer.epochs=1", "log.plots=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "xor" / "metrics.jsonl").is_file()


def test_copy_keeps_the_relative_path_and_overwrites_nothing(tmp_path):
    assert examples.copy("xor", tmp_path) == [tmp_path / "configs" / "xor.yaml"]
    assert (tmp_path / "configs" / "xor.yaml").read_bytes() == (REPO / "configs" / "xor.yaml").read_bytes()
    written = examples.copy("slurm", tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in (REPO / "slurm").iterdir())
    assert all(p.stat().st_mode & 0o111 for p in written)  # sbatch scripts stay executable
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "single.sh").write_text("mine")
    with pytest.raises(UserError, match="launch/single.sh already exists: nothing was copied"):
        examples.copy("launch", tmp_path)
    assert sorted(p.name for p in (tmp_path / "launch").iterdir()) == ["single.sh"]
    with pytest.raises(UserError, match="'nope' is not a shipped example"):
        examples.copy("nope", tmp_path)


def test_the_starter_is_the_tutorial_under_the_users_names(tmp_path):
    written = write_starter(tmp_path / "mine", slurm=True)
    names = sorted(p.relative_to(tmp_path / "mine").as_posix() for p in written)
    assert names == sorted(["train.py", "config.yaml", *(f"slurm/{p.name}" for p in (REPO / "slurm").iterdir())])
    script = (tmp_path / "mine" / "train.py").read_text()
    assert "python train.py config.yaml" in script and "examples/" not in script
    assert "dir: runs/train" in (tmp_path / "mine" / "config.yaml").read_text()
    with pytest.raises(UserError, match="train.py already exists"):
        write_starter(tmp_path / "mine")


def test_init_prints_what_it_wrote_and_what_to_run(tmp_path):
    result = run_cli("init", "--launch", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "train.py").is_file() and (tmp_path / "launch" / "single.sh").is_file()
    assert "next: python train.py config.yaml" in result.stdout


def test_one_version_everywhere():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "distrain.version.__version__"' in pyproject
    assert not re.search(r"^version = \"", pyproject, re.MULTILINE)  # no second copy
    result = subprocess.run([PYTHON, "-m", "distrain", "--version"], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == f"distrain {__version__}"


# ------------------------------------------------------------------------- the package as a user installs it


def build(tmp_path: Path) -> tuple[Path, Path]:
    """The sdist built from the repository's files, and the wheel built from the unpacked sdist (as `python -m build`
    does), by setuptools' own build backend: offline, with no build package needed."""
    dist = tmp_path / "dist"
    dist.mkdir()

    def backend(call: str, cwd: Path) -> Path:
        code = f"from setuptools import build_meta as b; print(b.{call}({str(dist)!r}))"
        result = subprocess.run([PYTHON, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return dist / result.stdout.strip().splitlines()[-1]

    # From a copy of the tracked files: in the repository, setuptools would also pack whatever an earlier
    # build's distrain.egg-info/SOURCES.txt lists (and leave one there), hiding a file MANIFEST.in misses.
    clean = tmp_path / "clean"
    for name in tracked_files():
        (clean / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, clean / name)
    sdist = backend("build_sdist", clean)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    wheel = backend("build_wheel", tmp_path / "src" / f"distrain-{__version__}")
    return sdist, wheel


def tracked_files() -> list[str]:
    """The repository's files as git tracks them (what a clone has, whatever the tests write meanwhile), or
    without git (a test run from an unpacked sdist) every file but what the build and the runs leave."""
    result = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if result.returncode == 0 and result.stdout.strip():
        return [p for p in result.stdout.splitlines() if (REPO / p).is_file()]
    left = {".venv", ".git", "build", "dist", "runs", "data", "wandb", "plots", "site", "__pycache__"}
    found = [p.relative_to(REPO) for p in REPO.rglob("*") if p.is_file()]
    return [p.as_posix() for p in found if not left & set(p.parts) and not p.parts[0].endswith(".egg-info")]


def fresh_venv(path: Path) -> Path:
    """A new virtual environment whose dependencies (torch and the rest) are this one's, read through a .pth
    line (no download), and whose pip is this one's too: only distrain itself is installed into it. A .pth
    line adds the folder alone: this environment's own distrain (an editable install) is not seen."""
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    return python


@pytest.mark.slow
def test_the_wheel_installs_and_trains_a_shipped_example_from_an_empty_folder(tmp_path):
    sdist, wheel = build(tmp_path)
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [p for p in tracked_files() if p not in in_sdist and not p.startswith(".git")]
    assert not missing, f"not in the sdist: {missing[:10]}"
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(f"distrain-{__version__}.dist-info/METADATA").decode()
    for line in (f"Version: {__version__}", "Requires-Python: >=3.10", "License-Expression: Apache-2.0"):
        assert line in metadata.splitlines(), line
    assert {"hf", "docs", "test"} <= set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.MULTILINE))
    assert "Classifier: Topic :: System :: Distributed Computing" in metadata and "Summary: Plain data" in metadata
    shipped = sorted(n.removeprefix("distrain/_shipped/") for n in names if n.startswith("distrain/_shipped/"))
    assert shipped == repo_files()  # the wheel holds the repository's folders, exactly
    assert all(n.startswith(("distrain/", f"distrain-{__version__}.dist-info/")) for n in names)

    python = fresh_venv(tmp_path / "venv")
    env = clean_env()
    env.pop("PYTHONPATH", None)
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, env=env, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()

    def run(*cmd: str | Path) -> subprocess.CompletedProcess:
        result = run_group([str(c) for c in cmd], env=env, timeout=300, cwd=empty)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    where = run(python, "-c", "import distrain; print(distrain.__file__, distrain.__version__)").stdout.split()
    assert Path(where[0]).is_relative_to(tmp_path / "venv") and where[1] == __version__  # the wheel's, not the repo
    distrain = tmp_path / "venv" / "bin" / "distrain"
    assert run(distrain, "--version").stdout.strip() == f"distrain {__version__}"
    short = ("trainer.epochs=2", "log.plots=false")
    run(distrain, "train", "xor", *short)
    assert (empty / "runs" / "xor" / "metrics.jsonl").is_file()
    torchrun = (python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    run(*torchrun, "-m", "distrain", "train", "xor", "run.dir=runs/xor-torchrun", *short)
    assert (empty / "runs" / "xor-torchrun" / "metrics.jsonl").is_file()
    run(distrain, "init", "--slurm", "--launch")
    assert (empty / "slurm" / "train.sbatch").is_file() and (empty / "launch" / "single.sh").is_file()
    assert "test loss" in run(python, "train.py", "config.yaml", *short).stdout
    assert (empty / "runs" / "train" / "model.pt").is_file()
