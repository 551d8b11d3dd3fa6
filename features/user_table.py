"""The embedded user store: every user's record (features/users.py) in one file that the service
loads, for one machine without Redis (`ranker users build`, RANKER_USER_STORE=PATH).

The records are the bytes Redis would hold (`users.encode`: the digest and the JSON features),
so a user scores the same from either store and the service reads both through one decoder.
Layout: keys (U,) int64 sorted and unique (the user's raw key: field 101's id, or a spec's user
key, features/values.py), per user its 16-byte digest, and the records' bytes concatenated with
their offsets. A lookup is one binary search; memory is the records' own size (a few KB a user
with hundreds of behaviour ids), not a padded width.

One `.npz` file with a content digest, written beside its target and renamed into place; `load`
checks layout and digest and refuses a damaged file with a reason (numpy only).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from features import npz, users

FORMAT_VERSION = 1


class UserTableError(ValueError):
    """A user table that cannot be served; the message says why."""


@dataclasses.dataclass(frozen=True)
class UserTable:
    keys: np.ndarray  # (U,) int64, sorted, unique
    digests: np.ndarray  # (U, 16) uint8: each record's digest (users.digest, as bytes)
    offsets: np.ndarray  # (U + 1,) int64 into `blob`
    blob: np.ndarray  # uint8: the records' JSON features, concatenated
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.digests.shape != (n, 16) or self.offsets.shape != (n + 1,):
            raise UserTableError(f"digests or offsets do not fit {n} users")
        if n and (np.any(np.diff(self.keys) <= 0) or np.any(np.diff(self.offsets) < 0)):
            raise UserTableError("keys are not sorted and unique, or offsets not ascending")
        if n and (self.offsets[0] != 0 or self.offsets[-1] != len(self.blob)):
            raise UserTableError("offsets do not span the records")

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_records(cls, records: Iterable[tuple[int, dict]], source: str = "") -> UserTable:
        """(raw key, {feature: (ids, values)}) per user; a later record of a key replaces an
        earlier one (as a later HSET would)."""
        latest: dict[int, tuple[str, bytes]] = {}
        for key, feats in records:
            latest[int(key)] = users.encode(feats)
        keys = np.array(sorted(latest), dtype=np.int64)
        blobs = [latest[k][1] for k in keys.tolist()]
        digests = np.frombuffer(
            b"".join(bytes.fromhex(latest[k][0]) for k in keys.tolist()), np.uint8
        ).reshape(len(keys), 16)
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        return cls(keys, digests, offsets, blob, source)

    def get(self, key: int) -> tuple[str, bytes] | None:
        """(digest, record) of a user, None when the table has none."""
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            return None
        return self.digests[i].tobytes().hex(), self.blob[
            self.offsets[i] : self.offsets[i + 1]
        ].tobytes()

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.keys, self.digests, self.offsets, self.blob):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        path = Path(path)
        meta = {
            "format_version": FORMAT_VERSION,
            "digest": self.digest,
            "source": self.source,
            "users": len(self),
        }
        arrays = {"keys": self.keys, "digests": self.digests, "offsets": self.offsets}
        npz.save(path, {**arrays, "blob": self.blob}, meta)

    @classmethod
    def load(cls, path: Path) -> UserTable:
        names = ("keys", "digests", "offsets", "blob")
        meta, arrays = npz.load(path, lambda _: names, UserTableError, "user table")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserTableError(f"format_version is not {FORMAT_VERSION}")
        try:
            table = cls(
                arrays["keys"].astype(np.int64, copy=False),
                arrays["digests"].astype(np.uint8, copy=False),
                arrays["offsets"].astype(np.int64, copy=False),
                arrays["blob"].astype(np.uint8, copy=False),
                str(meta.get("source", "")),
            )
        except (TypeError, AttributeError) as e:
            raise UserTableError(f"bad layout ({e})") from None
        if table.digest != meta.get("digest"):
            raise UserTableError("content does not match its digest (damaged or edited)")
        return table
