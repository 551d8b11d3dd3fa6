"""Serve the newest model under RANKER_MODEL_DIR on RANKER_HOST:RANKER_PORT.

`ranker serve`, or `python -m service`. Every setting is a RANKER_* environment variable
(service/config.py); the command line takes --help only, which lists them and loads nothing.
"""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
import typing

from pydantic import ValidationError

from service import logs, workers
from service.config import Settings


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        lines = [
            f"RANKER_{'_'.join(str(x) for x in err['loc']).upper() or '?'}: {err['msg']}"
            for err in e.errors()
        ]
        sys.exit("invalid settings:\n  " + "\n  ".join(lines))


def settings_help() -> str:
    """Every variable Settings reads: its name and default, then its description and choices."""
    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["settings (environment variables; a bad value stops the start, naming it):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"  {prefix}{name.upper()}={'(unset)' if default is None else default}")
        notes = [field.description] if field.description else []
        if typing.get_origin(field.annotation) is typing.Literal:
            notes.append("one of: " + ", ".join(map(str, typing.get_args(field.annotation))))
        lines += [
            textwrap.fill(note, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
            for note in notes
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--help, and nothing else: the settings come from the environment. (`--listen-fd` is the
    supervisor's, service/workers.py: a worker serves on the socket it inherits.)"""
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def quiet_gc() -> None:
    """Every request allocates thousands of small objects, so the collector runs often, and each
    full collection used to walk every object the process holds (the modules of FastAPI,
    pydantic, numpy, ONNX Runtime: hundreds of thousands), a pause of tens of milliseconds that
    made most of the low-load p99. Objects alive at start are frozen out of the collector's
    sight (they live as long as the process), and young collections run 10x less often."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(7000, g1, g2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = load_settings()
    log_config = logs.configure(settings.log_format)
    if settings.workers > 1 and args.listen_fd is None:  # the supervisor serves nothing itself
        sys.exit(workers.supervise(settings))
    from service.main import create_app  # (the supervisor above serves nothing: not imported)
    from service.server import DrainingServer

    if settings.gc_freeze:
        quiet_gc()
    server = DrainingServer(
        create_app(settings),
        settings,
        log_level="info",
        access_log=False,
        log_config=log_config,
    )
    server.run(None if args.listen_fd is None else [workers.inherited(args.listen_fd)])
    sys.exit(0 if server.started else 1)


if __name__ == "__main__":
    main()
