"""The ranker's one command line: `ranker <verb> [options]` (ranker/cli.py).

`__version__` is the installed package's version (features/package.py reads it, for the service
too).
"""

from features.package import __version__

__all__ = ["__version__"]
