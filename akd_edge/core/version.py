"""The package version, in one place: ``akd-edge --version``, pyproject.toml and every file that records it."""

__version__ = "0.1.0"
