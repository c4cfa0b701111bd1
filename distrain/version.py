"""The package version, its one source (pyproject.toml reads it when building; `distrain --version` and
distrain.__version__ print it), in a module of its own: importing it loads nothing."""

__version__ = "0.1.0"
