"""A decoded /rank request -> the embedding rows of both sides, through one model version's
feature contract (numpy, no I/O).

The one place a request's features become model input: each field is checked against the
contract (known, on the right side, one id where the field takes one), lists longer than a
field's columns are truncated by the contract's rule, and both sides are hashed. The Ranker
encodes every request through this; the benchmark uses it too, so its raw ceiling scores exactly
what the service would.

A spec's model (contract version 4, features/spec.py) is read by feature name: text ids of its
text features hash as training hashed them (features/values.py), a numeric feature takes a
number, a context feature comes in `context_features`, and a cross is never sent: it is
computed per candidate from the user's list and the candidate's key values by the function
training used (`count_in`). The user's lists travel with the user's representation (the "user
part": the representation and, packed after it, the raw ids and weights of the lists its
crosses count in), so a user read from the store or a cache tier has them too; `fill_crosses`
writes the crosses' rows once the user part is known.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from features import values as V
from features.bounds import MAX_NUMBER, MAX_WEIGHT
from features.contract import ALL_FIELDS, FeatureContract, Field, Side, field_side, truncate
from features.items import ITEM_ID_FIELD, ItemTable, ItemTableError, lookup
from features.users import UserRecordError
from service.errors import ClientError
from service.request import MAX_ATTRIBUTE, RankRequest, WeightedIds


class Encoded(NamedTuple):
    user_ids: np.ndarray | None  # (1, user width) embedding rows, int64; None: from the store
    user_weights: np.ndarray | None  # (1, user width) pooling weights, float32
    user_lists: np.ndarray | None  # (payload,) float32: the user's cross lists (pack_lists)
    item_ids: np.ndarray  # (candidates, item width)
    item_weights: np.ndarray
    price: np.ndarray  # (candidates,) float64: the request's, else the item table's; NaN: none
    unknown: np.ndarray  # candidate positions with no features at all: scored by their id alone
    cross_keys: tuple[np.ndarray, ...] = ()  # per cross: (candidates, key width) raw ids
    # the raw rows as served, for the impression log (raw_items, user_raw): kept references,
    # composed off the request path
    user_raw: tuple[np.ndarray, np.ndarray] | None = None  # (user width,) ids and values
    items_raw: RawItems | None = None


@dataclasses.dataclass(frozen=True)
class RawItems:
    """What the candidates' raw rows are made of, as encoding left it: the rows of what the
    request gave (inline features and context; one row for all when by ids), and which item
    table row each candidate took which stored fields from. RequestEncoder.raw_items composes
    the rows of the returned candidates from it, by the rules the hashed rows were made by."""

    base_ids: np.ndarray  # (candidates, width) raw ids, or (1, width) by ids
    base_vals: np.ndarray
    keys: np.ndarray  # (candidates,) item keys' raw ids, -1 where none
    pos: np.ndarray  # item table rows
    found: np.ndarray  # in the item table
    inline: np.ndarray  # (candidates, stored fields) given by the request
    by_ids: bool


def cross_lists(contract: FeatureContract) -> list[tuple[Field, slice]]:
    """The user list fields a contract's crosses count in, in contract order."""
    used = {f.cross[0] for f in contract.fields if f.cross}
    return [(f, c) for f, c in contract.columns("user") if f.name in used]


def payload_size(contract: FeatureContract) -> int:
    """float32 slots the user part carries after the representation: per list column its raw
    id (in three 21-bit parts, each exact in a float32, and finite, as every cached value must
    be: user_cache checks) and its weight."""
    return sum(4 * f.max_len for f, _ in cross_lists(contract))


_PART = 21  # bits of a raw id per float32 slot (a float32 holds integers to 2^24 exactly)


def pack_ids(ids: np.ndarray) -> np.ndarray:
    """(n,) int64 raw ids (-1 padding, else in [0, 2^63)) -> (3n,) float32, exactly."""
    v = np.where(ids >= 0, ids, 0).astype(np.int64)
    mask = (1 << _PART) - 1
    parts = np.stack([v & mask, (v >> _PART) & mask, v >> (2 * _PART)]).astype(np.float32)
    parts[0, ids < 0] = -1.0
    return parts.reshape(-1)


def unpack_ids(packed: np.ndarray) -> np.ndarray:
    p = packed.reshape(3, -1).astype(np.int64)
    ids = p[0] | (p[1] << _PART) | (p[2] << (2 * _PART))
    return np.where(p[0] < 0, -1, ids)


class StoredItems:
    """An item table hashed through one model's contract, once, at load: a request's stored
    features are then a gather of rows (int32 embedding rows and float32 weights of the item
    fields' columns), never a hash."""

    def __init__(
        self,
        table: ItemTable,
        contract: FeatureContract,
        chunk: int = 1 << 16,
        keep_raw: bool = False,
    ):
        columns = {f.name: c for f, c in contract.columns("item")}
        self.fields = [n for n in table.max_len if n in columns]
        if not self.fields:
            raise ItemTableError(
                f"its fields ({', '.join(table.max_len)}) are none of the model's item "
                f"features ({', '.join(columns)})"
            )
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
        # the raw ids of the fields the model's crosses look up (as the model sees them)
        own_cols = dict((f.name, c) for f, c in own.columns("item"))
        keys = [f.cross[1] for f in contract.fields if f.cross and f.cross[1] in own_cols]
        self.raw = {k: np.empty((n, own.field(k).max_len), np.int64) for k in dict.fromkeys(keys)}
        # the impression log's (keep_raw): every stored column's raw ids and values, as hashed
        self.raw_ids = np.empty((n, width), np.int64) if keep_raw else None
        self.raw_vals = np.empty((n, width), np.float32) if keep_raw else None
        for a in range(0, n, chunk):
            part = slice(a, min(a + chunk, n))
            raw_ids, raw_vals = table.rows_for(own, part)
            ids, weights = own.hash_side("item", raw_ids, raw_vals)
            self.ids[part], self.weights[part] = ids, weights
            if keep_raw:
                self.raw_ids[part], self.raw_vals[part] = raw_ids, raw_vals
            for k, out in self.raw.items():
                out[part] = raw_ids[:, own_cols[k]]
        self.stored = {f.name: np.arange(c.start, c.stop) for f, c in own.columns("item")}
        # the request columns of self.ids' columns, in order: one gather when nothing overrides
        self.all_cols = np.concatenate([self.cols[f.name] for f, _ in own.columns("item")])
        # the raw table is not kept: ids (for lookups), prices, the numeric attributes the
        # model takes and the raw ids its crosses look up are all a request needs (and, for
        # the impression log, the raw rows: keep_raw)
        self.item_id, self.price, self.digest = table.item_id, table.price, table.digest
        self.numeric = {  # an Ali-CCP model's --items attributes (a spec's are in the rows)
            f.name: table.values(f.name)
            for f in contract.side_fields("item")
            if f.numeric and not f.source
        }

    def __len__(self) -> int:
        return len(self.item_id)

    def raw_rows(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raw ids and values of table rows `pos` the hashed rows were made from, in the
        stored columns' order (`stored`, `all_cols`)."""
        if self.raw_ids is None:
            raise RuntimeError("the item table's raw rows were not kept (keep_raw)")
        return self.raw_ids[pos], self.raw_vals[pos]

    def index(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return lookup(self.item_id, keys)

    @property
    def nbytes(self) -> int:
        extra = sum(v.nbytes for k, v in self.numeric.items() if k != "price")
        extra += sum(v.nbytes for v in self.raw.values())
        if self.raw_ids is not None:
            extra += self.raw_ids.nbytes + self.raw_vals.nbytes
        return (
            self.ids.nbytes + self.weights.nbytes + self.item_id.nbytes + self.price.nbytes + extra
        )


def _check_stored(f: Field, values) -> None:
    """A stored field's values meet the bounds a request's would (features/bounds.py): a
    numeric field's number at most MAX_NUMBER in size, any other field's weights in
    (0, MAX_WEIGHT]; else the record is unusable (its user is scored by id, nothing cached)."""
    if f.numeric:
        bad = [v for v in values if not abs(v) <= MAX_NUMBER]
        rule = f"at most {MAX_NUMBER:g} in size"
    else:
        bad = [v for v in values if not 0 < v <= MAX_WEIGHT]
        rule = f"a weight in (0, {MAX_WEIGHT:g}]"
    if bad:
        raise UserRecordError(f"field {f.name}: {bad[0]} is not {rule}, as a request's must be")


class RequestEncoder:
    def __init__(self, contract: FeatureContract, items: StoredItems | None = None):
        self.contract, self.items = contract, items
        self.named = contract.keys is not None  # a spec's model: features by name
        self._item_columns = {
            f.name: (c.start, f.max_len) for f, c in self.contract.columns("item")
        }
        # item fields a single integer id goes straight into (no numeric, text or cross field)
        self._plain = {
            f.name: (c.start, f.max_len)
            for f, c in self.contract.columns("item")
            if not f.numeric and f.dtype != "text" and not f.cross
        }
        self._fields = {
            side: {f.name: f for f in self.contract.side_fields(side)} for side in ("user", "item")
        }
        # Ali-CCP fields this model leaves out (training's --without): given, they are skipped,
        # so one request serves models with and without them; other names are refused.
        # numeric item attributes (ranker train --items): filled per candidate by _numeric
        self._numeric = [
            (f, c.start) for f, c in self.contract.columns("item") if f.numeric and not f.source
        ]
        used = {f.name for f in self.contract.fields}
        self.unused = {
            side: frozenset(
                n for n in ALL_FIELDS if not self.named and n not in used and field_side(n) == side
            )
            for side in ("user", "item")
        }
        keys = contract.keys or {
            "user": {"dtype": "int", "field": "101"},
            "item": {"dtype": "int", "field": ITEM_ID_FIELD},
        }
        self.key_dtype = {side: keys[side]["dtype"] for side in ("user", "item")}
        self.key_field = {side: keys[side]["field"] for side in ("user", "item")}
        # crosses: (field, column, user list columns, item key field) and the user part's lists
        ucols = {f.name: c for f, c in self.contract.columns("user")}
        self.crosses = [
            (f, c.start, ucols[f.cross[0]], f.cross[1])
            for f, c in self.contract.columns("item")
            if f.cross
        ]
        self.lists = cross_lists(contract)
        self.payload = payload_size(contract)

    # ---- keys -----------------------------------------------------------------------------
    def key(self, side: Side, value) -> int | None:
        """A user or item id as the raw id the stores are keyed by; None when it cannot be one
        (text for an integer key; a negative integer of an Ali-CCP model)."""
        if self.key_dtype[side] == "text":
            return V.text_id(value) if type(value) is str else None
        if type(value) is not int:
            return None
        if self.named:
            return value & V.INT64_MAX
        return value if value >= 0 else None

    def key_kind(self, side: Side) -> str:
        return "text" if self.key_dtype[side] == "text" else "integer"

    # ---- one feature ----------------------------------------------------------------------
    def _field(self, side: Side, name: str, value, where: str) -> tuple[Field, list, list] | None:
        """One request feature -> (contract field, raw ids, weights), checked; lists truncated
        to the field's columns by the contract's rule (highest weights kept). None: a field of
        the side that this model leaves out."""
        f = self._fields[side].get(name)
        if f is None and name in self.unused[side]:
            return None
        at = f"{where}.{name}"
        if f is None:
            other = "item" if side == "user" else "user"
            noun = "feature" if self.named else "field"
            theirs = self._fields[other].get(name)
            if theirs is not None:
                kind = theirs.source if self.named else other
                hint = f"; it is {'an' if kind[0] in 'aeiou' else 'a'} {kind} {noun}"
            else:
                hint = f"; known {side} {noun}s: {', '.join(self._fields[side])}"
            raise ClientError(f"unknown {side} {noun} {name!r}{hint}", field=at)
        if f.cross:
            raise ClientError(
                f"feature {name} is a cross, computed from the user's {f.cross[0]} and the "
                f"item's {f.cross[1]}: it is never sent",
                field=at,
            )
        if where == "context_features" and self.named and f.source != "context":
            raise ClientError(
                f"feature {name} is an {f.source} feature, not a context one: give it with "
                "the candidate (or in the item table)",
                field=at,
            )
        kind = type(value)
        if f.numeric:
            if kind not in (int, float):
                raise ClientError(f"feature {name} is numeric: give a number", field=at)
            if not -MAX_ATTRIBUTE <= value <= MAX_ATTRIBUTE:
                raise ClientError(f"{at}: {value} is outside [-1e18, 1e18]", field=at)
            return f, [0], [float(value)]
        if kind is float:
            raise ClientError(f"{side} feature {name} takes ids, not a number", field=at)
        if kind is int or kind is str:
            ids, weights, at_id = [value], [1.0], lambda k: at
        elif kind is WeightedIds:
            ids, weights = value.ids, value.weights
            at_id = lambda k: f"{at}.ids[{k}]"  # noqa: E731
        else:
            ids, weights = value, [1.0] * len(value)
            at_id = lambda k: f"{at}[{k}]"  # noqa: E731
        ids = self._raw_ids(f, ids, at_id)
        if len(ids) > f.max_len:
            if f.max_len == 1:
                raise ClientError(f"field {name} takes one id, got {len(ids)}", field=at)
            kept = truncate(ids, weights, f.max_len)
            ids, weights = kept[0].tolist(), kept[1].tolist()
        return f, ids, weights

    def _raw_ids(self, f: Field, ids: list, at) -> list:
        """Request ids -> raw ids: an integer as it is (at least 0), a text hashed (a text
        feature of a spec's model only)."""
        text = f.dtype == "text"
        out = ids
        for k, i in enumerate(ids):
            if (type(i) is str) != text:
                what = "text ids" if text else "integer ids"
                raise ClientError(f"{at(k)}: feature {f.name} takes {what}, got {i!r}", field=at(k))
            if not text and i < 0 and not self.named:
                raise ClientError(f"{at(k)}: ids are integers in [0, 2^63), got {i}", field=at(k))
        if text:
            out = [V.text_id(i) for i in ids]
        elif self.named:
            out = [i & V.INT64_MAX for i in ids]  # as training's: the sign bit cleared
        return out

    def store_key(self, user_id) -> int:
        """The key a request without user_features finds its user by in the store."""
        key = self.key("user", user_id)
        if key is None:
            where = "" if self.named else " (field 101)"
            raise ClientError(
                f"without user_features the user_id must be a user's {self.key_kind('user')} "
                f"id{where} to look up in the user store",
                field="user_id",
            )
        return key

    # ---- the user -------------------------------------------------------------------------
    def encode(self, req: RankRequest, price: np.ndarray | None = None) -> Encoded:
        """`price`: the request's per candidate, NaN where it gives none (request.Ranking's)."""
        raw = self.user_raw(req)
        user = (None, None, None) if raw is None else self._user_rows(raw)
        *items, items_raw = self.encode_items(req, price)
        return Encoded(*user, *items, user_raw=raw, items_raw=items_raw)

    def encode_user(self, req: RankRequest):
        """The request's user features -> one hashed row (1, user width) and its cross lists;
        (None, None, None) when it gives none (its user's features are then read from the
        store: encode_stored_user)."""
        raw = self.user_raw(req)
        return (None, None, None) if raw is None else self._user_rows(raw)

    def user_raw(self, req: RankRequest) -> tuple[np.ndarray, np.ndarray] | None:
        """The request's user features -> the user's raw row (ids, values); None when it
        gives none."""
        if req.user_features is None:
            return None
        feats = {}
        for name, value in req.user_features.items():
            checked = self._field("user", name, value, "user_features")
            if checked is not None:
                feats[name] = checked[1:]
        return self._keyed_user(feats, self.key("user", req.user_id))

    def encode_stored_user(self, feats: dict, key: int | None = None):
        """A user's stored raw features (features/users.py, already checked) -> one hashed row
        and its cross lists (stored_user_raw's row)."""
        return self._user_rows(self.stored_user_raw(feats, key))

    def stored_user_raw(self, feats: dict, key: int | None = None):
        """A user's stored raw features -> its raw row; the fields this model leaves out are
        skipped, long lists truncated by the contract. A spec's model reads its user key
        feature from the key the user was found by (`key`), as training reads it from the
        events, whatever the record says."""
        used = self._fields["user"]
        feats = {k: v for k, v in feats.items() if k in used}
        for k, (_, values) in feats.items():
            _check_stored(used[k], values)
        return self._keyed_user(feats, key)

    def _keyed_user(self, feats: dict, key: int | None):
        """A user's raw row of `feats`; a spec's model reads its user key feature from the key
        (the request's user_id, or the one the store found the user by), whatever the features
        say, as training reads it from every event's key column."""
        name = self.key_field["user"]
        if self.named and name and key is not None:
            feats[name] = ([key], [1.0])
        return self.contract.encode_entity("user", feats)

    def encode_unknown_user(self, key: int):
        """A user the store lacks: its id is its one feature (the user key's, where the model
        reads it)."""
        return self._user_rows(self.unknown_user_raw(key))

    def unknown_user_raw(self, key: int):
        name = self.key_field["user"]
        return self.contract.encode_entity("user", {name: ([key], [1.0])} if name else {})

    def _user_rows(self, raw: tuple[np.ndarray, np.ndarray]):
        raw_ids, raw_vals = raw
        ids, weights = self.contract.hash_side("user", raw_ids[None], raw_vals[None])
        return ids, weights, self.pack_lists(raw_ids, raw_vals)

    def pack_lists(self, raw_ids: np.ndarray, raw_vals: np.ndarray) -> np.ndarray:
        """(payload,) float32: the raw ids (pack_ids) and weights of the cross lists."""
        if not self.lists:
            return np.empty(0, np.float32)
        parts = []
        for _, c in self.lists:
            parts += [pack_ids(raw_ids[c]), raw_vals[c]]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def split(self, user_part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A user part -> (representation, packed lists)."""
        cut = len(user_part) - self.payload
        return user_part[:cut], user_part[cut:]

    def fill_crosses(self, rows: Encoded, lists: np.ndarray) -> None:
        """Each cross's row per candidate from the user's packed lists and the candidates' key
        ids (rows.cross_keys), in place: the count's numeric bucket, weight 1."""
        if not self.crosses:
            return
        user_lists, at = {}, 0
        for f, _ in self.lists:  # each list indexed once, whatever number of crosses count in it
            n = f.max_len
            ids = unpack_ids(lists[at : at + 3 * n])
            user_lists[f.name] = V.OneList(ids, lists[at + 3 * n : at + 4 * n])
            at += 4 * n
        for (f, col, _, _), keys in zip(self.crosses, rows.cross_keys, strict=True):
            v = user_lists[f.cross[0]].count(keys)
            rows.item_ids[:, col] = self.contract.numeric_rows(f, v)
            rows.item_weights[:, col] = 1.0

    # ---- the candidates -------------------------------------------------------------------
    def encode_items(self, req: RankRequest, given: np.ndarray | None = None):
        """Candidates -> (hashed item rows, weights, price, unknown positions, cross key ids);
        see _encode_items, then the numeric attributes' rows. The price, the one place it is
        resolved: the request's (`given`, NaN where none), else the item table's; the fusion and
        a model that reads price as a feature both take it from here."""
        if req.candidates is None:
            keys = self._item_keys(req.item_ids)
        else:  # an id that cannot be an item key is never looked up: -1
            keys = np.array([self._key_or(k) for k in req.item_keys()], np.int64)
            if self.named:
                for i, c in enumerate(req.candidates):
                    if c.attributes is not None:
                        raise ClientError(
                            "a spec's model takes its numeric features by name in `features`; "
                            "`attributes` is for an Ali-CCP model trained with --items",
                            field=f"candidates[{i}].attributes",
                        )
        if self.items is None:
            pos, found = np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        else:
            pos, found = self.items.index(keys)
            found &= keys >= 0
        ids, weights, stored, unknown, raw, items_raw = self._encode_items(req, keys, pos, found)
        price = stored if given is None else np.where(np.isnan(given), stored, given)
        if self._numeric:
            self._fill_numeric(req, pos, found, price, ids, weights)
        cross_keys = tuple(
            self._cross_keys(name, raw, keys, pos, found, req) for _, _, _, name in self.crosses
        )
        return ids, weights, price, unknown, cross_keys, items_raw

    def raw_items(self, answers: list[tuple[RawItems, np.ndarray]]):
        """The raw rows (ids, values) of each answer's candidates `rows` as they were served,
        the answers' one after the other: what the request gave, the candidate's own id where
        it is the key feature and the table lacks it, and the item table's stored fields the
        request did not give (_encode_items's rules, in raw ids). The crosses' columns stay
        empty: they are counted from the user's lists. One item table read and one pass per
        stored field for all the answers."""
        ids = np.concatenate(
            [
                np.repeat(r.base_ids, len(rows), 0) if r.by_ids else r.base_ids[rows]
                for r, rows in answers
            ]
        )
        vals = np.concatenate(
            [
                np.repeat(r.base_vals, len(rows), 0) if r.by_ids else r.base_vals[rows]
                for r, rows in answers
            ]
        )
        keys = np.concatenate([r.keys[rows] for r, rows in answers])
        found = np.concatenate([r.found[rows] for r, rows in answers])
        by_ids = np.concatenate([np.full(len(rows), r.by_ids) for r, rows in answers])
        own = by_ids & ~found & (keys >= 0)  # (inline rows carry their own id already)
        id_col = self._item_columns.get(self.key_field["item"])
        if own.any() and id_col is not None:
            ids[own, id_col[0]], vals[own, id_col[0]] = keys[own], 1.0
        if self.items is None or not found.any():
            return ids, vals
        at = np.flatnonzero(found)
        pos = np.concatenate([r.pos[rows] for r, rows in answers])
        inline = np.concatenate([r.inline[rows] for r, rows in answers])[at]
        t_ids, t_vals = self.items.raw_rows(pos[at])
        if not inline.any():  # nothing given inline: every stored column at once
            ids[np.ix_(at, self.items.all_cols)], vals[np.ix_(at, self.items.all_cols)] = (
                t_ids,
                t_vals,
            )
            return ids, vals
        for k, name in enumerate(self.items.fields):
            take = ~inline[:, k]
            cols, mine = self.items.cols[name], self.items.stored[name]
            ids[np.ix_(at[take], cols)] = t_ids[np.ix_(take, mine)]
            vals[np.ix_(at[take], cols)] = t_vals[np.ix_(take, mine)]
        return ids, vals

    def _key_or(self, value) -> int:
        k = self.key("item", value)
        return -1 if k is None else k

    def _item_keys(self, item_ids: list) -> np.ndarray:
        # all integers (the decoder bounds them to int64): one conversion, no loop in Python
        keys = np.array(item_ids) if self.key_dtype["item"] == "int" else None
        if keys is not None and keys.dtype == np.int64:
            if self.named:
                return keys & V.INT64_MAX
            if (keys < 0).any():
                i = int(np.flatnonzero(keys < 0)[0])
                raise ClientError(
                    f"item_ids[{i}]: an item id of field 205 is an integer in [0, 2^63), got "
                    f"{item_ids[i]}",
                    field=f"item_ids[{i}]",
                )
            return keys
        out = []
        for i, k in enumerate(item_ids):
            raw = self.key("item", k)
            if raw is None:
                raise ClientError(
                    f"item_ids[{i}]: this model's item ids are {self.key_kind('item')}s, got {k!r}",
                    field=f"item_ids[{i}]",
                )
            out.append(raw)
        return np.array(out, dtype=np.int64)

    def _cross_keys(self, name: str, raw, keys, pos, found, req: RankRequest) -> np.ndarray:
        """(candidates, columns) raw ids of item field `name` as the candidates' rows hold it:
        given inline, else the item table's, else the candidate's key where it is the key."""
        start, width = self._item_columns[name]
        out = np.full((len(keys), width), -1, dtype=np.int64)
        stored = self.items.raw.get(name) if self.items is not None else None
        inline = np.zeros(len(keys), dtype=bool)
        if raw is not None:
            inline = np.array([name in c.features for c in req.candidates], dtype=bool)
            out[inline] = raw[inline, start : start + width]
        take = found & ~inline
        if stored is not None and take.any():
            out[take] = stored[pos[take]]
        if name == self.key_field["item"]:
            rest = ~inline & ~found & (keys >= 0)
            out[rest, 0] = keys[rest]
        return out

    def _fill_numeric(
        self,
        req: RankRequest,
        pos: np.ndarray,
        found: np.ndarray,
        price: np.ndarray,
        ids: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """Each numeric field's row per candidate from its value: `price` (resolved), or the
        request's `attributes`, else the item table's (`pos`, `found`: the candidates' table
        rows), else none (padding, weight 0), exactly as training joined the table
        (training/attributes.py)."""
        for f, col in self._numeric:
            if f.name == "price":
                v = price
            else:
                v = np.full(len(found), np.nan)
                if self.items is not None:
                    v[found] = self.items.numeric[f.name][pos[found]]
                if req.candidates is not None:
                    given = [(c.attributes or {}).get(f.name) for c in req.candidates]
                    mine = np.array([np.nan if x is None else x for x in given], np.float64)
                    v = np.where(np.isnan(mine), v, mine)
            v = v.astype(np.float32)
            ok = np.isfinite(v)
            ids[:, col] = np.where(ok, self.contract.numeric_rows(f, np.where(ok, v, 0.0)), 0)
            weights[:, col] = ok

    def _encode_items(self, req: RankRequest, keys: np.ndarray, pos: np.ndarray, found: np.ndarray):
        """Candidates (their integer ids `keys`, -1 where none; `pos`, `found`: their item table
        rows) -> (hashed item rows, weights, table price, unknown positions, the inline
        candidates' raw rows or None).

        Features given in the request (inline, and context for every candidate) are built as
        Python lists and hashed at once; with an item table, a candidate whose integer id it
        holds gets the stored rows of every item field it did not give inline (a vectorised
        gather per field). A candidate with no features at all and an id the table lacks is
        scored by its id alone (its key feature: field 205, or a spec's) and reported as
        unknown."""
        width = self.contract.width("item")
        base_ids, base_vals = [-1] * width, [0.0] * width
        context = req.context_features or {}
        for name, value in context.items():
            self._put(base_ids, base_vals, self._field("item", name, value, "context_features"))
        key_field = self._item_columns.get(self.key_field["item"])
        id_col = None if key_field is None else key_field[0]
        n = len(keys)
        raw_ids = None
        stored = self.items.fields if self.items is not None else []
        inline = np.zeros((n, len(stored)), dtype=bool)  # item fields given inline
        # an item field in context_features applies to every candidate, overriding the table's
        # (as a candidate's own inline field does), never dropped under the stored rows
        inline[:, [k for k, name in enumerate(stored) if name in context]] = True
        bare = np.ones(n, dtype=bool)  # no inline features
        if req.candidates is None:  # by id alone: the context row for every candidate
            base = np.array(base_ids, dtype=np.int64)[None], np.array(base_vals, np.float32)[None]
            items_raw = RawItems(*base, keys, pos, found, inline, by_ids=True)
            h_ids, h_weights = self.contract.hash_side("item", *base)  # hashed once
            ids, weights = np.repeat(h_ids, n, axis=0), np.repeat(h_weights, n, axis=0)
            own = np.flatnonzero(~found & (keys >= 0))  # unknown: their id is their feature
            if own.size and id_col is not None:
                own_ids, own_vals = np.repeat(base[0], own.size, 0), np.repeat(base[1], own.size, 0)
                own_ids[:, id_col], own_vals[:, id_col] = keys[own], 1.0
                ids[own], weights[own] = self.contract.hash_side("item", own_ids, own_vals)
        else:
            raw_ids, raw_vals = self._inline_rows(req, base_ids, base_vals, context, inline, bare)
            # a bare candidate's own id is its key feature (stored rows replace it when found);
            # a spec's candidate's, whenever it does not give the key feature itself, as
            # training reads it from every event
            if id_col is not None:
                own = bare & (keys >= 0)
                if self.named:
                    name = self.key_field["item"]
                    given = np.array([name in c.features for c in req.candidates], dtype=bool)
                    own = ~given & (keys >= 0)
                raw_ids[own, id_col] = keys[own]
                raw_vals[own, id_col] = 1.0
            ids, weights = self.contract.hash_side("item", raw_ids, raw_vals)
            items_raw = RawItems(raw_ids, raw_vals, keys, pos, found, inline, by_ids=False)
        price = np.full(n, np.nan)
        useless = np.flatnonzero(bare & ~found & (keys < 0))
        if useless.size:
            i = int(useless[0])
            raise ClientError(
                f"candidate {i} has no features, and its item_id is not an item id to look up",
                field=f"candidates[{i}].features",
            )
        if self.items is None:
            return ids, weights, price, np.flatnonzero(bare), raw_ids, items_raw
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
        return ids, weights, price, np.flatnonzero(bare & ~found), raw_ids, items_raw

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
        columns = self._plain
        stored = self.items.fields if self.items is not None else ()
        rows_ids, rows_vals = [], []
        for i, c in enumerate(req.candidates):
            ids, vals = base_ids.copy(), base_vals.copy()
            if c.features:
                bare[i] = False
                for k, name in enumerate(stored):
                    inline[i, k] = inline[i, k] or name in c.features
            for name, value in c.features.items():
                col = columns.get(name)
                kind = type(value)
                if col is not None and kind is int and col[1] == 1 and value >= 0:
                    ids[col[0]] = value
                    vals[col[0]] = 1.0
                elif (
                    col is not None
                    and kind is list
                    and name not in context
                    and len(value) <= col[1]
                    and all(type(i) is int and i >= 0 for i in value)
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
