"""The build's one step beyond pyproject.toml: the wheel carries the repository's shipped folders (configs/,
examples/, slurm/, launch/: distrain.examples.FOLDERS) as distrain/_shipped/, copied from them when it is
built, so `distrain train xor` and `distrain examples` work after `pip install` with no copy kept in git.
An editable install reads the repository's folders themselves (distrain.examples.root)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FOLDERS = ("configs", "examples", "slurm", "launch")  # distrain.examples.FOLDERS (a test compares them)


class BuildWithExamples(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return  # the repository's own folders are found next to the package
        here = Path(__file__).resolve().parent
        for folder in FOLDERS:
            for source in sorted((here / folder).rglob("*")):
                if source.is_file() and "__pycache__" not in source.parts and not source.name.startswith("."):
                    target = Path(self.build_lib, "distrain", "_shipped", source.relative_to(here))
                    self.mkpath(str(target.parent))
                    self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildWithExamples})
