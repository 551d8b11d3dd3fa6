"""The installed package's version: pyproject.toml's, the one place it is written. Here, at the
bottom of the house, so the service and the command line both read it without one importing the
other (CHANGELOG.md's newest release and the git tag `v<version>` name the same; a test checks
the first)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ranker")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
