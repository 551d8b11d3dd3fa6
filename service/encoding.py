"""A decoded /rank request -> the embedding rows of both sides, through one model version's
feature contract (numpy, no I/O).

The one place a request's features become model input: each field is checked against the
contract (known, on the right side, one id where the field takes one), lists longer than a
field's columns are truncated by the contract's rule, and both sides are hashed. The Ranker
encodes every request through this; the benchmark uses it too, so its raw ceiling scores exactly
what the service would.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from features.contract import ALL_FIELDS, FeatureContract, Field, Side, field_side, truncate
from features.items import ITEM_ID_FIELD, ItemTable, lookup
from service.errors import ClientError
from service.request import RankRequest, WeightedIds


class Encoded(NamedTuple):
    user_ids: np.ndarray | None  # (1, user width) embedding rows, int64; None: from the store
    user_weights: np.ndarray | None  # (1, user width) pooling weights, float32
    item_ids: np.ndarray  # (candidates, item width)
    item_weights: np.ndarray
    price: np.ndarray  # (candidates,) float64 from the item table, NaN where it has none
    unknown: np.ndarray  # candidate positions with no features at all: scored by their id alone


class StoredItems:
    """An item table hashed through one model's contract, once, at load: a request's stored
    features are then a gather of rows (int32 embedding rows and float32 weights of the item
    fields' columns), never a hash."""

    def __init__(self, table: ItemTable, contract: FeatureContract, chunk: int = 1 << 16):
        columns = {f.name: c for f, c in contract.columns("item")}
        self.fields = [n for n in table.max_len if n in columns]
        self.cols = {n: np.arange(columns[n].start, columns[n].stop) for n in self.fields}
        # The contract cut to the table's fields hashes exactly as the whole one (salts and
        # rows are per field) and only the columns kept; in chunks, so loading a million items
        # never holds more than a chunk's temporaries.
        own = dataclasses.replace(
            contract,
            fields=tuple(f for f in contract.fields if f.side == "user" or f.name in self.fields),
        )
        width, n = own.width("item"), len(table)
        self.ids = np.empty((n, width), dtype=np.int32)  # (items, stored columns)
        self.weights = np.empty((n, width), dtype=np.float32)
        for a in range(0, n, chunk):
            part = slice(a, min(a + chunk, n))
            ids, weights = own.hash_side("item", *table.rows_for(own, part))
            self.ids[part], self.weights[part] = ids, weights
        self.stored = {f.name: np.arange(c.start, c.stop) for f, c in own.columns("item")}
        # the request columns of self.ids' columns, in order: one gather when nothing overrides
        self.all_cols = np.concatenate([self.cols[f.name] for f, _ in own.columns("item")])
        # the raw table is not kept: ids (for lookups), prices and the numeric attributes the
        # model takes are all a request needs
        self.item_id, self.price, self.digest = table.item_id, table.price, table.digest
        self.numeric = {
            f.name: table.values(f.name) for f in contract.side_fields("item") if f.numeric
        }

    def __len__(self) -> int:
        return len(self.item_id)

    def index(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return lookup(self.item_id, keys)

    @property
    def nbytes(self) -> int:
        extra = sum(v.nbytes for k, v in self.numeric.items() if k != "price")
        return (
            self.ids.nbytes + self.weights.nbytes + self.item_id.nbytes + self.price.nbytes + extra
        )


class RequestEncoder:
    def __init__(self, contract: FeatureContract, items: StoredItems | None = None):
        self.contract, self.items = contract, items
        self._item_columns = {
            f.name: (c.start, f.max_len) for f, c in self.contract.columns("item")
        }
        self._fields = {
            side: {f.name: f for f in self.contract.side_fields(side)} for side in ("user", "item")
        }
        # Ali-CCP fields this model leaves out (training's --without): given, they are skipped,
        # so one request serves models with and without them; other names are refused.
        # numeric item attributes (ranker train --items): filled per candidate by _numeric
        self._numeric = [(f, c.start) for f, c in self.contract.columns("item") if f.numeric]
        used = {f.name for f in self.contract.fields}
        self.unused = {
            side: frozenset(n for n in ALL_FIELDS if n not in used and field_side(n) == side)
            for side in ("user", "item")
        }

    def _field(self, side: Side, name: str, value, where: str) -> tuple[Field, list, list] | None:
        """One request feature -> (contract field, ids, weights), checked; lists truncated to
        the field's columns by the contract's rule (highest weights kept). None: a field of
        the side that this model leaves out."""
        f = self._fields[side].get(name)
        if f is None and name in self.unused[side]:
            return None
        if f is None:
            other = "item" if side == "user" else "user"
            hint = (
                f"; it is a {other} field"
                if name in self._fields[other]
                else f"; known {side} fields: {', '.join(self._fields[side])}"
            )
            raise ClientError(f"unknown {side} field {name!r}{hint}", field=f"{where}.{name}")
        if isinstance(value, int):
            return f, [value], [1.0]
        if isinstance(value, WeightedIds):
            ids, weights = value.ids, value.weights
        else:
            ids, weights = value, [1.0] * len(value)
        if len(ids) > f.max_len:
            if f.max_len == 1:
                raise ClientError(
                    f"field {name} takes one id, got {len(ids)}", field=f"{where}.{name}"
                )
            kept = truncate(ids, weights, f.max_len)
            ids, weights = kept[0].tolist(), kept[1].tolist()
        return f, ids, weights

    def encode(self, req: RankRequest) -> Encoded:
        return Encoded(*self.encode_user(req), *self.encode_items(req))

    def encode_user(self, req: RankRequest) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The request's user features -> one hashed row (1, user width); (None, None) when it
        gives none (its user's features are then read from the store: encode_stored_user)."""
        if req.user_features is None:
            return None, None
        feats = {}
        for name, value in req.user_features.items():
            checked = self._field("user", name, value, "user_features")
            if checked is not None:
                feats[name] = checked[1:]
        raw_ids, raw_vals = self.contract.encode_entity("user", feats)
        return self.contract.hash_side("user", raw_ids[None], raw_vals[None])

    def encode_stored_user(self, feats: dict) -> tuple[np.ndarray, np.ndarray]:
        """A user's stored raw features (features/users.py, already checked) -> one hashed row;
        the fields this model leaves out are skipped, long lists truncated by the contract."""
        used = self._fields["user"]
        raw_ids, raw_vals = self.contract.encode_entity(
            "user", {k: v for k, v in feats.items() if k in used}
        )
        return self.contract.hash_side("user", raw_ids[None], raw_vals[None])

    def encode_items(self, req: RankRequest):
        """Candidates -> (hashed item rows, weights, table price, unknown positions); see
        _encode_items, then the numeric attributes' rows."""
        if req.candidates is None:
            keys = np.array(req.item_ids, dtype=np.int64)
        else:  # str (and negative) ids are never item ids: -1
            keys = np.array([k if type(k) is int else -1 for k in req.item_keys()], np.int64)
        if self.items is None:
            pos, found = np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        else:
            pos, found = self.items.index(keys)
            found &= keys >= 0
        ids, weights, price, unknown = self._encode_items(req, keys, pos, found)
        if self._numeric:
            self._fill_numeric(req, pos, found, ids, weights)
        return ids, weights, price, unknown

    def _fill_numeric(
        self,
        req: RankRequest,
        pos: np.ndarray,
        found: np.ndarray,
        ids: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """Each numeric field's row per candidate from its value: the request's (`price`, or
        `attributes`), else the item table's (`pos`, `found`: the candidates' table rows),
        else none (padding, weight 0), exactly as training joined the table
        (training/attributes.py)."""
        for f, col in self._numeric:
            v = np.full(len(found), np.nan)
            if self.items is not None:
                v[found] = self.items.numeric[f.name][pos[found]]
            if req.candidates is not None:
                given = [
                    c.price if f.name == "price" else (c.attributes or {}).get(f.name)
                    for c in req.candidates
                ]
                mine = np.array([np.nan if x is None else x for x in given], dtype=np.float64)
                v = np.where(np.isnan(mine), v, mine)
            v = v.astype(np.float32)
            ok = np.isfinite(v)
            ids[:, col] = np.where(ok, self.contract.numeric_rows(f, np.where(ok, v, 0.0)), 0)
            weights[:, col] = ok

    def _encode_items(self, req: RankRequest, keys: np.ndarray, pos: np.ndarray, found: np.ndarray):
        """Candidates (their integer ids `keys`, -1 where none; `pos`, `found`: their item table
        rows) -> (hashed item rows, weights, table price, unknown positions).

        Features given in the request (inline, and context for every candidate) are built as
        Python lists and hashed at once; with an item table, a candidate whose integer id it
        holds gets the stored rows of every item field it did not give inline (a vectorised
        gather per field). A candidate with no features at all and an id the table lacks is
        scored by its id alone (field 205) and reported as unknown."""
        width = self.contract.width("item")
        base_ids, base_vals = [-1] * width, [0.0] * width
        context = req.context_features or {}
        for name, value in context.items():
            self._put(base_ids, base_vals, self._field("item", name, value, "context_features"))
        id_col = self._item_columns[ITEM_ID_FIELD][0]
        n = len(keys)
        stored = self.items.fields if self.items is not None else []
        inline = np.zeros((n, len(stored)), dtype=bool)  # item fields given inline
        bare = np.ones(n, dtype=bool)  # no inline features
        if self.items is None and req.candidates is None:
            raise ClientError(
                "ranking by item_ids needs an item table (RANKER_ITEM_TABLE)", field="item_ids"
            )
        if req.candidates is None:  # by id alone: the context row for every candidate
            base = np.array(base_ids, dtype=np.int64)[None], np.array(base_vals, np.float32)[None]
            h_ids, h_weights = self.contract.hash_side("item", *base)  # hashed once
            ids, weights = np.repeat(h_ids, n, axis=0), np.repeat(h_weights, n, axis=0)
            own = np.flatnonzero(~found & (keys >= 0))  # unknown: their id is their feature
            if own.size:
                raw_ids, raw_vals = np.repeat(base[0], own.size, 0), np.repeat(base[1], own.size, 0)
                raw_ids[:, id_col], raw_vals[:, id_col] = keys[own], 1.0
                ids[own], weights[own] = self.contract.hash_side("item", raw_ids, raw_vals)
        else:
            raw_ids, raw_vals = self._inline_rows(req, base_ids, base_vals, context, inline, bare)
            # a bare candidate's own id is its 205 feature (stored rows replace it when found)
            raw_ids[bare & (keys >= 0), id_col] = keys[bare & (keys >= 0)]
            raw_vals[bare & (keys >= 0), id_col] = 1.0
            ids, weights = self.contract.hash_side("item", raw_ids, raw_vals)
        price = np.full(n, np.nan)
        useless = np.flatnonzero(bare & ~found & (keys < 0))
        if useless.size:
            i = int(useless[0])
            raise ClientError(
                f"candidate {i} has no features, and its item_id is not an item id to look up",
                field=f"candidates[{i}].features",
            )
        if self.items is None:
            return ids, weights, price, np.flatnonzero(bare)
        if not inline.any():  # nothing given inline: every stored column at once
            rows = np.flatnonzero(found)
            ids[np.ix_(rows, self.items.all_cols)] = self.items.ids[pos[rows]]
            weights[np.ix_(rows, self.items.all_cols)] = self.items.weights[pos[rows]]
        for k, name in enumerate(stored if inline.any() else ()):
            take = found & ~inline[:, k]
            if take.any():
                rows = pos[take]
                cols = self.items.cols[name]
                ids[np.ix_(take, cols)] = self.items.ids[np.ix_(rows, self.items.stored[name])]
                weights[np.ix_(take, cols)] = self.items.weights[
                    np.ix_(rows, self.items.stored[name])
                ]
        price[found] = self.items.price[pos[found]]
        return ids, weights, price, np.flatnonzero(bare & ~found)

    def _inline_rows(
        self,
        req: RankRequest,
        base_ids: list,
        base_vals: list,
        context: dict,
        inline: np.ndarray,
        bare: np.ndarray,
    ):
        """Raw rows of the candidates' inline features, noting in `inline` which stored fields
        each gives and in `bare` which give none. Built as Python lists and converted once (a
        numpy round trip per candidate cost 10x more at 500 candidates); a single id, the
        common case, is written without building any list."""
        columns = self._item_columns
        stored = self.items.fields if self.items is not None else ()
        rows_ids, rows_vals = [], []
        for i, c in enumerate(req.candidates):
            ids, vals = base_ids.copy(), base_vals.copy()
            if c.features:
                bare[i] = False
                for k, name in enumerate(stored):
                    inline[i, k] = name in c.features
            for name, value in c.features.items():
                col = columns.get(name)
                kind = type(value)
                if col is not None and kind is int and col[1] == 1:
                    ids[col[0]] = value
                    vals[col[0]] = 1.0
                elif (
                    col is not None
                    and kind is list
                    and name not in context
                    and len(value) <= col[1]
                ):
                    # a plain id list that fits: its columns still hold padding
                    start = col[0]
                    ids[start : start + len(value)] = value
                    vals[start : start + len(value)] = [1.0] * len(value)
                else:  # weighted ids, long lists, context overrides, unknown fields
                    where = f"candidates[{i}].features"
                    self._put(ids, vals, self._field("item", name, value, where))
            rows_ids.append(ids)
            rows_vals.append(vals)
        return np.array(rows_ids, dtype=np.int64), np.array(rows_vals, dtype=np.float32)

    def _put(self, ids: list, vals: list, checked: tuple[Field, list, list] | None) -> None:
        if checked is None:  # a field this model leaves out
            return
        f, fids, fvals = checked
        start = self._item_columns[f.name][0]
        pad = f.max_len - len(fids)
        ids[start : start + f.max_len] = [*fids, *([-1] * pad)]
        vals[start : start + f.max_len] = [*fvals, *([0.0] * pad)]
