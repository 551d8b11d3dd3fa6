"""The ranker's one command line: `ranker <verb> [options]` (ranker/cli.py).

`__version__` is the installed package's version (pyproject.toml's, the one place it is
written); CHANGELOG.md's newest release and the git tag `v<version>` name the same (a test
checks the first).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ranker")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
