"""`ranker <verb> [options]`: one command line over the project's entry points.

Each verb is one module's `main(argv)`, called with the arguments after the verb unchanged, so
`ranker train --data X --out Y` is `python -m training.train --data X --out Y`. A verb's module
is imported only when that verb runs: `ranker --help` reads the modules' docstrings from their
source, and imports neither torch nor the service.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
import textwrap
from collections.abc import Callable

PROG = "ranker"
USAGE = f"usage: {PROG} <verb> [options]"

# verb -> the module whose main(argv) it runs. The order is the order of `ranker --help`.
VERBS: dict[str, str] = {
    "generate": "training.generate",
    "train": "training.train",
    "export": "training.export",
    "compare": "training.compare",
    "tune": "training.tune",
    "bench-train": "training.bench",
    "serve": "service.__main__",
    "items": "ranker.items",
    "users": "ranker.users",
    "predict": "ranker.predict",
    "replay": "ranker.replay",
    "fusion": "ranker.fusion",
    "join": "ranker.join",
    "bench": "loadtest.bench",
    "chaos": "loadtest.chaos",
    "overload": "loadtest.overload",
}

WIDTH = 100
INDENT = 2 + max(map(len, VERBS)) + 2
# "python -m service: serve ..." / "make bench: the ...": the spelling, not the summary.
SPELLING = re.compile(r"^(python -m [\w.]+|make [\w-]+):\s*")


def old_spelling(verb: str) -> str:
    """The command a verb replaces: `python -m training.train`, `python -m service`."""
    return f"python -m {VERBS[verb].removesuffix('.__main__')}"


def summary(module: str) -> str:
    """The first sentence of a module's docstring, read from its source without importing it
    (only its parent package is imported, to find it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return f"({module} is missing)"
    with open(spec.origin, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    sentence = SPELLING.sub("", re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0])
    return sentence[:1].upper() + sentence[1:]


def overview() -> str:
    lines = [
        USAGE,
        "",
        "Generate data, train and export a model, serve it, measure it.",
        f"`{PROG} <verb> --help` shows a verb's own options; everything after the verb is passed",
        "to it unchanged.",
        "",
        "verbs:",
    ]
    for verb, module in VERBS.items():
        # A summary longer than a line (no PEP 257 summary line) is cut after the second.
        text = textwrap.wrap(summary(module), WIDTH - INDENT, max_lines=2, placeholder=" ...")
        lines.append(f"  {verb:<{INDENT - 2}}{text[0]}")
        lines += [" " * INDENT + line for line in text[1:]]
    lines += ["", "each replaces:"]
    lines += [f"  {verb:<{INDENT - 2}}{old_spelling(verb)}" for verb in VERBS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int | None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        sys.stderr.write(overview())
        return 2
    verb, rest = args[0], args[1:]
    if verb in ("-h", "--help"):
        sys.stdout.write(overview())
        return 0
    if verb == "--version":
        from ranker import __version__

        print(f"{PROG} {__version__}")
        return 0
    if verb not in VERBS:
        sys.stderr.write(
            f"{USAGE}\n{PROG}: error: unknown verb {verb!r} (choose from {', '.join(VERBS)})\n"
        )
        return 2
    run: Callable[[list[str]], int | None] = importlib.import_module(VERBS[verb]).main
    # argparse names the program after sys.argv[0]: usage and errors then say `ranker train`.
    saved, sys.argv = sys.argv, [f"{PROG} {verb}", *rest]
    try:
        return run(rest)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
