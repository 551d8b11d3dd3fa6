"""A command line derived from a config dataclass, so that each option is declared once: on its
field.

One option per field, `--field-name`, with the field's default and `metadata["help"]`:
  a field without a default      a required option
  str, int, float, Path          that type (`Path | None` as Path)
  metadata["choices"]            those values only
  tuple[int, ...]                comma-separated: --hidden 200,80
  dict[str, int]                 NAME=N items: --max-len 110_14=64 210=8
  bool, default True             --no-field-name turns it off (help describes that flag)
  bool, default False            --field-name turns it on
  metadata["cli"] = False        no option: the field keeps its default
  metadata["metavar"]            the metavar argparse shows
The config's own __post_init__ checks values; a ValueError from it ends the parse with the
usage and its message, as argparse's own errors do.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

MISSING = dataclasses.MISSING


def prog(module: str) -> str:
    """The program a usage line names: `ranker <verb>` when the ranker command runs it (it sets
    sys.argv[0] so, ranker/cli.py), else `python -m <module>`, as the user typed it."""
    return sys.argv[0] if sys.argv[0].startswith("ranker ") else f"python -m {module}"


def option(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    help: str | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field carrying what its command-line option needs."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "cli": cli}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of the dataclass `cls`, in field order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True):
            flag, kwargs = _argument(f, hints[f.name])
            parser.add_argument(flag, **kwargs)


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass built from parsed options (dict fields from their NAME=N items)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = dict(v) if typing.get_origin(hints[f.name]) is dict else v
    return cls(**values)


def parse(parser: argparse.ArgumentParser, cls: type, argv: list[str] | None = None) -> Any:
    """Parse `argv` into `cls`; a ValueError of the config exits as a usage error."""
    args = parser.parse_args(argv)
    try:
        return from_args(cls, args)
    except ValueError as e:
        parser.error(str(e))


def _argument(f: dataclasses.Field, hint: Any) -> tuple[str, dict]:
    flag = "--" + f.name.replace("_", "-")
    kw: dict[str, Any] = {"help": f.metadata.get("help")}
    if f.metadata.get("metavar"):
        kw["metavar"] = f.metadata["metavar"]
    if f.default is not MISSING:
        kw["default"] = f.default
    elif f.default_factory is not MISSING:
        kw["default"] = f.default_factory()
    else:
        kw["required"] = True
    hint = _without_none(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if kw.get("default"):
            return "--no-" + flag[2:], {**kw, "dest": f.name, "action": "store_false"}
        return flag, {**kw, "action": "store_true"}
    if f.metadata.get("choices") is not None:
        kw["choices"] = f.metadata["choices"]
    if origin is tuple:
        kw["type"] = _comma_list(args[0])
    elif origin is dict:
        kw.update(nargs="*", type=_pair(args[1]))
    elif hint in (int, float, Path):
        kw["type"] = hint
    elif hint is not str and origin is not Literal:
        raise TypeError(f"no command-line form for {f.name}: {hint}")
    return flag, kw


def _without_none(hint: Any) -> Any:
    """`X | None` -> X (None stays the default only)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _comma_list(cast: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {cast.__name__}s, got {text!r}"
            ) from None

    return parse


def _pair(cast: type):
    def parse(text: str) -> tuple[str, Any]:
        name, _, value = text.partition("=")
        try:
            return name, cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected NAME={cast.__name__}, got {text!r}"
            ) from None

    return parse
