"""The package version (also in pyproject.toml), in a module of its own: importing it loads nothing."""

__version__ = "0.1.0"
