"""The stores' file format: named arrays and a JSON header in one `.npz`, written beside the
target and renamed into place (a reader never sees half a file), read back with the header
checked to be a JSON object. The item table (items.py) and the embedded user store
(user_table.py) keep their layouts and content digests on top of it."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np


def save(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, meta=np.frombuffer(json.dumps(dict(meta)).encode(), np.uint8))
    os.replace(tmp, path)


def load(
    path: Path,
    names: Callable[[dict], Iterable[str]],
    error: type[Exception],
    what: str,
) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, {name: array}) of the arrays `names(header)` lists; `error` naming `what` for
    a file that cannot be read as one."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            if not isinstance(meta, dict):
                raise ValueError("its header is not a JSON object")
            return meta, {k: z[k] for k in names(meta)}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise error(f"unreadable {what} ({type(e).__name__}: {e})") from None
