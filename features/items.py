"""The item feature table: every item's own features by item id, for ranking by ids.

One row per item id: its raw ids and values of the item fields in a fixed layout, its price (NaN
where unknown) and any further numeric attributes by name (`numeric`: rating, sales...; NaN where
unknown). An Ali-CCP table is keyed by the id of field 205 and holds fields 205, 206, 207, 210
and 216; a spec's (`ranker items build --spec`, training/tables.py) is keyed by the raw id of
the spec's item key (features/values.py: an integer as it is, a text hashed) and holds the
spec's item features by name, its numeric ones as id 0 with the number as value. Raw, not
hashed: one table serves any model of its features, and a model hashes it once, at load,
through its own feature contract (`rows_for`). Combination fields (508, 509, 702, 853) and a
spec's crosses depend on the user as well and context on the request, so none is an item's
own.

Lookups are vectorised: ids are kept sorted and `index` is one `searchsorted` for all the
candidates of a request. A table is one `.npz` file with its layout and a content digest; `load`
checks both and refuses a damaged file with a reason (numpy only: no torch, no web stack).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from features import npz
from features.contract import ITEM_FIELDS, FeatureContract, truncate

FORMAT_VERSION = 1
ITEM_ID_FIELD = "205"


class ItemTableError(ValueError):
    """A table that cannot be served; the message says why."""


@dataclasses.dataclass(frozen=True)
class ItemTable:
    item_id: np.ndarray  # (N,) int64, sorted, unique
    ids: np.ndarray  # (N, width) int64 raw feature ids, -1 = padding
    vals: np.ndarray  # (N, width) float32
    price: np.ndarray  # (N,) float64, NaN = unknown
    max_len: Mapping[str, int]  # columns of each item field (Ali-CCP: in ITEM_FIELDS order)
    source: str = ""
    numeric: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # (N,) float64

    def __post_init__(self) -> None:
        n, width = len(self.item_id), sum(self.max_len.values())
        if not self.max_len or any(n < 1 for n in self.max_len.values()):
            raise ItemTableError(f"fields {dict(self.max_len)}: none, or one without columns")
        if self.ids.shape != (n, width) or self.vals.shape != (n, width):
            raise ItemTableError(f"feature arrays are not ({n}, {width})")
        if self.price.shape != (n,):
            raise ItemTableError(f"price is not ({n},)")
        for name, v in self.numeric.items():
            if name == "price" or np.shape(v) != (n,):
                raise ItemTableError(f"numeric column {name!r} is not ({n},) or is named price")
        if n and np.any(np.diff(self.item_id) <= 0):
            raise ItemTableError("item ids are not sorted and unique")

    def __len__(self) -> int:
        return len(self.item_id)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(json.dumps(dict(self.max_len)).encode())
        for a in (self.item_id, self.ids, self.vals, self.price):
            h.update(np.ascontiguousarray(a).tobytes())
        for name in sorted(self.numeric):  # none: the digest of a table without them
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.numeric[name], dtype=np.float64).tobytes())
        return h.hexdigest()

    def values(self, name: str) -> np.ndarray:
        """A numeric column by name (`price` included), float64, NaN where unknown."""
        if name == "price":
            return self.price
        if name not in self.numeric:
            have = ", ".join(["price", *self.numeric])
            raise ItemTableError(f"no numeric column {name!r} in the item table (it has {have})")
        return self.numeric[name]

    def columns(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, n in self.max_len.items():
            out[name] = slice(start, start + n)
            start += n
        return out

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def from_rows(
        cls,
        contract: FeatureContract,
        item_ids: np.ndarray,
        item_vals: np.ndarray,
        price: np.ndarray | None = None,
        source: str = "",
    ) -> ItemTable:
        """Rows of a contract's item side (impressions in log order) -> the newest features
        seen per item id: a later row of an item replaces an earlier one."""
        cols = dict(contract.columns("item"))
        keep = [cols[f] for f in (contract.field(n) for n in ITEM_FIELDS)]
        ids = np.concatenate([item_ids[:, c] for c in keep], axis=1)
        vals = np.concatenate([item_vals[:, c] for c in keep], axis=1)
        key = ids[:, 0]  # field 205 comes first
        has = key >= 0
        ids, vals, key = ids[has], vals[has], key[has]
        rev = len(key) - 1 - np.unique(key[::-1], return_index=True)[1]  # last occurrence
        order = rev[np.argsort(key[rev], kind="stable")]
        p = np.full(len(order), np.nan) if price is None else np.asarray(price)[has][order]
        return cls(
            key[order],
            ids[order],
            vals[order].astype(np.float32),
            p.astype(np.float64),
            {n: contract.field(n).max_len for n in ITEM_FIELDS},
            source,
        )

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """One .npz file, written beside its target and renamed into place."""
        path = Path(path)
        meta = {
            "format_version": FORMAT_VERSION,
            "max_len": dict(self.max_len),
            "digest": self.digest,
            "source": self.source,
            "items": len(self),
            "numeric": list(self.numeric),
        }
        arrays = {"item_id": self.item_id, "ids": self.ids, "vals": self.vals, "price": self.price}
        npz.save(path, {**arrays, **{f"numeric:{k}": v for k, v in self.numeric.items()}}, meta)

    @classmethod
    def load(cls, path: Path) -> ItemTable:
        meta, arrays = npz.load(
            path,
            lambda m: (
                "item_id",
                "ids",
                "vals",
                "price",
                *(f"numeric:{k}" for k in m.get("numeric", [])),
            ),
            ItemTableError,
            "item table",
        )
        numeric = {k.removeprefix("numeric:"): v for k, v in arrays.items() if ":" in k}
        if meta.get("format_version") != FORMAT_VERSION:
            raise ItemTableError(f"format_version {meta.get('format_version')!r} is not 1")
        try:
            table = cls(
                arrays["item_id"].astype(np.int64, copy=False),
                arrays["ids"].astype(np.int64, copy=False),
                arrays["vals"].astype(np.float32, copy=False),
                arrays["price"].astype(np.float64, copy=False),
                {k: int(v) for k, v in meta["max_len"].items()},
                str(meta.get("source", "")),
                {k: v.astype(np.float64, copy=False) for k, v in numeric.items()},
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ItemTableError(f"bad layout ({e})") from None
        if table.digest != meta.get("digest"):
            raise ItemTableError("content does not match its digest (damaged or edited)")
        return table

    # ---- serving --------------------------------------------------------------------------
    def index(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return lookup(self.item_id, item_ids)

    def rows_for(
        self, contract: FeatureContract, rows: slice = slice(None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Table rows as raw rows of `contract`'s item side (combination and context columns
        empty), each field fitted to the contract's columns by its truncation rule."""
        n = len(self.item_id[rows])
        width = contract.width("item")
        ids = np.full((n, width), -1, dtype=np.int64)
        vals = np.zeros((n, width), dtype=np.float32)
        mine = self.columns()
        for f, cols in contract.columns("item"):
            if f.name not in mine:
                continue
            src_ids, src_vals = self.ids[rows, mine[f.name]], self.vals[rows, mine[f.name]]
            if src_ids.shape[1] <= f.max_len:
                ids[:, cols.start : cols.start + src_ids.shape[1]] = src_ids
                vals[:, cols.start : cols.start + src_ids.shape[1]] = src_vals
                continue
            for r in np.flatnonzero((src_ids >= 0).sum(axis=1) > f.max_len):
                present = src_ids[r] >= 0
                kept = truncate(src_ids[r][present], src_vals[r][present], f.max_len)
                ids[r, cols.start : cols.start + len(kept[0])] = kept[0]
                vals[r, cols.start : cols.start + len(kept[0])] = kept[1]
            short = (src_ids >= 0).sum(axis=1) <= f.max_len
            ids[short, cols] = src_ids[short, : f.max_len]
            vals[short, cols] = src_vals[short, : f.max_len]
        return ids, vals


def lookup(sorted_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each id, found mask), one vectorised search for all of them."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if not len(sorted_ids):
        return np.zeros(len(item_ids), np.int64), np.zeros(len(item_ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, item_ids), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == item_ids
