"""A model folder: where the newest exported version is, and the error a folder that cannot be
served raises (the engine's, the loader's)."""

from __future__ import annotations

from pathlib import Path

from features import manifest


class ModelError(RuntimeError):
    """A model folder that cannot be served; the message says why."""


def newest_version(model_dir: Path) -> Path:
    """model_dir itself when it holds a manifest, else its newest NAME/VERSION (or VERSION)
    folder by version name (versions are UTC timestamps, so the name sorts by age)."""
    model_dir = Path(model_dir)
    if (model_dir / manifest.FILE).is_file():
        return model_dir
    found = sorted(model_dir.glob(f"*/{manifest.FILE}")) + sorted(
        model_dir.glob(f"*/*/{manifest.FILE}")
    )
    if not found:
        raise ModelError(f"no exported model under {model_dir} (run `make train`)")
    return max(found, key=lambda p: (p.parent.name, str(p))).parent
