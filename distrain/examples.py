"""The examples shipped with distrain, found by name and copied out, from a clone and from an installed wheel
alike: the configs of the built-in components (configs/), the example scripts and their configs
(examples/), the SLURM batch scripts (slurm/) and the launchers (launch/).

    distrain examples                    every shipped file, by its path (configs/xor.yaml, slurm/train.sbatch)
    distrain examples copy xor .         ./configs/xor.yaml: a config's name, or a shipped file or folder
    distrain examples copy examples .    ./examples/: the scripts and their configs, as the docs run them
    distrain train xor                   a name that is not a file is a shipped config

One source of truth: in a clone (or an editable install) the shipped files are the repository's folders
themselves; a wheel carries the same folders as distrain/_shipped/, copied there when the wheel is built
(the build_py step of setup.py). tests/test_examples.py checks that a built wheel holds exactly them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from distrain.errors import UserError, WriteError

FOLDERS = ("configs", "examples", "slurm", "launch")
"""The repository's folders that are shipped (setup.py copies the same list into the wheel)."""

_PACKAGED = Path(__file__).resolve().parent / "_shipped"


def root() -> Path:
    """The folder holding FOLDERS: the wheel's distrain/_shipped, or else the repository around the package."""
    return _PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent


def _is_shipped(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts and not path.name.startswith(".")


def files() -> list[str]:
    """Every shipped file's path relative to root(), sorted (configs/xor.yaml, examples/mypkg/models.py)."""
    base = root()
    return sorted(
        p.relative_to(base).as_posix() for folder in FOLDERS for p in (base / folder).rglob("*") if _is_shipped(p)
    )


def config_names() -> list[str]:
    """The shipped configs' names: configs/NAME.yaml."""
    return sorted(p.stem for p in (root() / "configs").glob("*.yaml"))


def resolve_config(arg: str) -> str:
    """A config argument as given: an existing file (or anything with a folder in it: the loader then names
    what is missing) is left alone; a bare name, with or without .yaml, is a shipped config."""
    if Path(arg).exists() or os.sep in arg or "/" in arg:
        return arg
    name = arg.removesuffix(".yaml")
    if name in config_names():
        return str(root() / "configs" / f"{name}.yaml")
    error = UserError(
        f"'{arg}' is neither a file nor a shipped config: give a YAML file's path, or one of "
        f"{', '.join(config_names())} (distrain examples lists every shipped file)"
    )
    error.agreed = True  # every rank resolves the same name alike: global rank 0 alone prints it
    raise error


def copy(what: str, dest: str | Path) -> list[Path]:
    """Copy a shipped config (by name), file or folder into `dest`, at the same relative path
    (`xor` -> dest/configs/xor.yaml, `slurm` -> dest/slurm/...), so the docs' commands run there as they
    do in a clone. Nothing is overwritten: if any target exists, nothing is written."""
    shipped = files()
    wanted = what.strip("/")
    if wanted.removesuffix(".yaml") in config_names() and "/" not in wanted:
        wanted = f"configs/{wanted.removesuffix('.yaml')}.yaml"
    chosen = [f for f in shipped if f == wanted or f.startswith(wanted + "/")]
    if not chosen:
        raise UserError(
            f"'{what}' is not a shipped example: give a config's name ({', '.join(config_names())}) or a "
            f"folder ({', '.join(FOLDERS)}) or file that `distrain examples` lists"
        )
    return copy_files({f: f for f in chosen}, Path(dest))


def copy_files(targets: dict[str, str], dest: Path) -> list[Path]:
    """Copy shipped files (relative path -> path under `dest`), refusing before writing anything if one of
    the targets exists. Scripts stay executable (a wheel may not keep the mode)."""
    base = root()
    existing = [str(dest / t) for t in targets.values() if (dest / t).exists()]
    if existing:
        raise UserError(f"{existing[0]} already exists: nothing was copied; remove it or choose another folder")
    written = []
    for source, target in targets.items():
        path = dest / target
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / source, path)
            if path.suffix in (".sh", ".sbatch"):
                path.chmod(path.stat().st_mode | 0o111)
        except OSError as exc:
            raise WriteError(path, exc) from None
        written.append(path)
    return written
