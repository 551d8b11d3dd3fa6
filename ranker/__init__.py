"""The ranker's one command line: `ranker <verb> [options]` (ranker/cli.py)."""
