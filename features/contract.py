"""The feature contract: how raw Ali-CCP feature ids become embedding rows.

Training and serving both import this module, and export writes its parameters into the model's
manifest, so the two sides can never disagree on an id. It needs numpy only (no torch, no
FastAPI).

Layout. Every field owns a fixed number of columns (`max_len`: 1 for single-valued fields, more
for multi-hot ones). A side (user or item) is the concatenation of its fields' columns in
contract order, so an encoded side is two arrays of shape (rows, side_width): embedding-row ids
(int64) and pooling weights (float32). Unused columns hold row 0 with weight 0.

Ids. The embedding space is field-aware and hashed: field f owns rows
[offset_f, offset_f + buckets_f) of one table, row 0 is padding, and a raw feature id goes to
offset_f + splitmix64(id ^ salt_f) mod buckets_f. Hashing keeps the contract a handful of numbers
(no vocabulary file to ship beside the model and keep in sync, unseen ids need no special case),
and sizing each field's buckets from its distinct-id count in the training data keeps collisions
rare where they matter. `fit_buckets` does that sizing.

Rare ids. An id seen a handful of times in training has too few labels for a row of its own
(it memorises them). `with_rare(min_count)` marks the buckets the training data showed fewer
than min_count times; their ids (and ids never seen, which hash to unseen buckets) read one
shared row per field, learned from all of them, as a vocabulary's out-of-vocabulary row would.
The mark is a bit per bucket, packed into the contract, so it stays one JSON document.

Numeric fields. An item attribute that is a number (price, rating, sales) enters the model as a
field of its own, bucketised: `with_numeric` fits quantile bounds on the training values, and the
value's bucket (`searchsorted(bounds, value, "right")`, the value as float32) picks one of the
field's len(bounds) + 1 rows. Its raw form is id 0 with the number as the value (a missing
number is padding: no row, weight 0); its pooling weight is 1 whatever the number. Bucketised,
not normalised: a price's effect on conversion is rarely linear (dearer than the category's
usual converts less, cheapest may signal poor quality), buckets learn any shape, need no scale
statistics beside the bounds, and an outlier lands in the last bucket instead of stretching a
scale; the bounds are a handful of numbers in the contract, so training and serving agree.

Multi-hot lists longer than `max_len` keep their `max_len` highest-valued ids (ties: first seen);
every caller truncates through `encode_entity` or `truncate`, so training and serving agree.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from features.spec import load as load_spec  # (the spec is below the contract)

Side = Literal["user", "item"]

# Ali-CCP is one spec: features/aliccp.yaml declares its fields by field id, side and columns,
# read once here by the spec reader (features/spec.py). User fields live in
# common_features_*.csv; the others are per impression in sample_skeleton_*.csv.
ALICCP_SPEC = Path(__file__).with_name("aliccp.yaml")


def _aliccp():
    spec = load_spec(ALICCP_SPEC)
    by_side = {
        side: tuple(f.name for f in spec.features if f.side == side)
        for side in ("user", "item", "event", "context")
    }
    max_len = {f.name: f.max_len for f in spec.features if f.max_len > 1}
    return spec, by_side, max_len


ALICCP, _SIDES, _MAX_LEN = _aliccp()
USER_FIELDS = _SIDES["user"]
ITEM_FIELDS = _SIDES["item"]
COMBINATION_FIELDS = _SIDES["event"]  # per impression, opaque (no rule to rebuild them)
# What each combination field counts (aliccp.yaml): the members of a user list that are the
# item field's own attribute. The two sides' ids differ, so matching them takes a rule learned
# from data (training/alignment.py).
COMBINES = {
    "508": ("109_14", "206"),  # the user's count for the item's category
    "509": ("110_14", "207"),  # shop
    "702": ("127_14", "216"),  # brand
    "853": ("150_14", "210"),  # intents
}
CONTEXT_FIELDS = _SIDES["context"]
ALL_FIELDS = tuple(f.name for f in ALICCP.features)  # user, item, combination, context
# The keys of the feature stores (a user's and an item's own id): every model keeps them.
KEY_FIELDS = (ALICCP.keys["user"], ALICCP.keys["item"])

# Default column counts of the multi-hot fields (every other field is single-valued). The
# behaviour fields hold the user's last two weeks of categories / shops / brands / intents:
# real users carry up to several hundred ids there.
DEFAULT_MAX_LEN = _MAX_LEN

PAD_ROW = 0
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def field_side(name: str) -> Side:
    if name in USER_FIELDS:
        return "user"
    if name in ALL_FIELDS:
        return "item"
    raise KeyError(f"unknown Ali-CCP field {name!r}")


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    side: Side
    max_len: int
    buckets: int = 0  # 0 until fitted on training data
    offset: int = 0  # first embedding row of this field
    # Buckets whose ids the training data showed fewer than `min_count` times (never-seen ones
    # included), packed (`pack_mask`); "" when the contract keeps every id its own bucket. Their
    # ids read the field's one shared row, offset + buckets, after its hashed rows.
    rare: str = ""
    # A numeric field's bucket bounds (ascending, float32 values); () for an id field.
    bounds: tuple[float, ...] = ()
    # A spec's feature (features/spec.py) keeps what encoding its raw values needs; "" / ()
    # for an Ali-CCP field. source: user, item, context or cross; dtype: int or text (how an
    # id/ids feature's values become raw ids, features/values.py); embedding: the shared table
    # (fields of one group hash alike into one range of rows); pool: mean or sum of a list
    # (else the contract's `mean`); cross: (user list field, item key field) it counts in.
    source: str = ""
    dtype: str = ""
    embedding: str = ""
    pool: str = ""
    cross: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        return bool(self.bounds)

    @property
    def rows(self) -> int:
        """Embedding rows this field's table owns: its buckets and, with a rare mask, the
        shared row."""
        return self.buckets + (1 if self.rare else 0)

    @property
    def table(self) -> str:
        """The embedding table's name: the field's own, or its shared group's."""
        return self.embedding or self.name

    @property
    def salt_name(self) -> str:
        return self.table


def pack_mask(mask: np.ndarray) -> str:
    """A boolean array as text for the contract's JSON: bits, zlib, base64."""
    return base64.b64encode(zlib.compress(np.packbits(mask).tobytes(), 9)).decode("ascii")


@functools.lru_cache(maxsize=256)
def unpack_mask(text: str, n: int) -> np.ndarray:
    """pack_mask's inverse (cached: the encoder asks per request)."""
    bits = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    mask = np.unpackbits(bits)[:n].astype(bool)
    if len(mask) != n:
        raise ValueError(f"a rare-bucket mask of {len(mask)} bits for {n} buckets")
    mask.setflags(write=False)
    return mask


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (numpy wraps uint64 arithmetic silently, as wanted)."""
    x = x.astype(np.uint64, copy=True)
    x += np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclasses.dataclass(frozen=True)
class FeatureContract:
    fields: tuple[Field, ...]
    weighted: bool = False  # pool with the feature's value as weight (else weight 1 per id)
    mean: bool = False  # multi-hot fields pool the (weighted) mean instead of the sum
    seed: int = 0
    # The feature spec the fields were declared by (features/spec.py, Spec.to_dict), kept for
    # what it says beyond encoding (tables, columns, keys); None for an Ali-CCP contract.
    spec: Mapping | None = dataclasses.field(default=None, compare=False)
    # A spec's keys: per side ("user", "item") the key's value type ("int" or "text": how an id
    # becomes the raw id the stores are keyed by, features/values.py) and the feature read from
    # the key column ("" when none is); None for an Ali-CCP contract (fields 101 and 205).
    keys: Mapping | None = None

    @property
    def version(self) -> int:
        """The layout's version, from what its fields use: 4 with a spec's named features
        (sources, value types, shared tables, crosses), 3 with a numeric field (bounds), 2 with
        a rare-bucket mask, else 1; a reader refuses versions it does not know."""
        if any(f.source for f in self.fields):
            return 4
        if any(f.bounds for f in self.fields):
            return 3
        return 2 if any(f.rare for f in self.fields) else 1

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def default(
        cls,
        max_len: Mapping[str, int] | None = None,
        weighted: bool = False,
        mean: bool = False,
        seed: int = 0,
        without: Sequence[str] = (),
    ) -> FeatureContract:
        """Every Ali-CCP field but those `without` names (a model may leave fields out: the
        combination fields, for one served by ids alone). The id fields 101 and 205 stay."""
        lens = {**DEFAULT_MAX_LEN, **(max_len or {})}
        for name, n in lens.items():
            field_side(name)
            if n < 1:
                raise ValueError(f"max_len of field {name} must be >= 1, got {n}")
        for name in without:
            field_side(name)
            if name in KEY_FIELDS:
                raise ValueError(f"field {name} is a store key: every model keeps it")
        return cls(
            tuple(Field(n, field_side(n), lens.get(n, 1)) for n in ALL_FIELDS if n not in without),
            weighted=weighted,
            mean=mean,
            seed=seed,
        )

    @classmethod
    def from_spec(cls, spec, dtypes: Mapping[str, str], seed: int = 0) -> FeatureContract:
        """The contract a feature spec (features/spec.py) declares, not yet fitted: one field
        per feature in spec order (user features on the user side; item, context, event and
        cross features on the candidate's), value types from `spec.check_columns`. Numeric and
        cross fields get their bounds (`with_bounds`) and every table its size
        (`fit_buckets`) from training data."""
        fields = tuple(
            Field(
                f.name,
                "user" if f.side == "user" else "item",
                f.max_len,
                source=f.side,
                dtype=dtypes.get(f.name, ""),
                embedding=f.embedding,
                pool=f.pooling if f.kind == "ids" else "",
                cross=f.count_in,
            )
            for f in spec.features
        )
        keys = {
            side: {
                "dtype": dtypes.get(f"keys.{side}", "int"),
                "field": next((f.name for f in spec.side(side) if f.column == spec.keys[side]), ""),
            }
            for side in ("user", "item")
        }
        return cls(fields, weighted=True, mean=False, seed=seed, spec=spec.to_dict(), keys=keys)

    def fit_buckets(
        self,
        distinct: Mapping[str, int],
        load: float = 0.25,
        min_buckets: int = 16,
        max_buckets: int = 1 << 20,
        fixed: Mapping[str, int] | None = None,
    ) -> FeatureContract:
        """Size each table's hash space from its distinct-id count (`distinct` by table name: a
        field's own, or its shared group's, over all its members): the next power of two at or
        above distinct / load, within [min_buckets, max_buckets]. At load 0.25 about 11% of ids
        share their row with another id. `fixed` sizes a table outright (a spec's `buckets`).
        Rows are laid out table by table (`_tables`)."""
        fixed = fixed or {}
        sizes = {}
        for t, members in self._tables():
            f = members[0]
            if f.numeric:
                sizes[t] = len(f.bounds) + 1
            elif t in fixed:
                sizes[t] = int(fixed[t])
            else:
                want = max(min_buckets, int(np.ceil(distinct.get(t, 0) / load)))
                sizes[t] = min(max_buckets, 1 << int(np.ceil(np.log2(want))))
        return self._laid_out({t: {"buckets": b, "rare": ""} for t, b in sizes.items()})

    def _tables(self) -> list[tuple[str, list[Field]]]:
        """Embedding tables in row order, each with its fields: tables only user fields read
        first, then those both sides read (shared groups), then the item side's, so each side's
        graph reads one contiguous range of rows (side_rows). An Ali-CCP contract lists its
        user fields first: its order, and so its rows, are the contract order."""
        tables: dict[str, list[Field]] = {}
        for f in self.fields:
            tables.setdefault(f.table, []).append(f)
        sides = {t: {f.side for f in fs} for t, fs in tables.items()}
        rank = {t: 0 if s == {"user"} else 1 if len(s) == 2 else 2 for t, s in sides.items()}
        return sorted(tables.items(), key=lambda kv: rank[kv[0]])

    def _laid_out(self, changes: Mapping[str, Mapping]) -> FeatureContract:
        """Every table's fields replaced with `changes[table]`, offsets assigned in table
        order."""
        new, offset = {}, PAD_ROW + 1
        for t, members in self._tables():
            for f in members:
                new[f.name] = dataclasses.replace(f, **changes.get(t, {}), offset=offset)
            offset += new[members[0].name].rows
        return dataclasses.replace(self, fields=tuple(new[f.name] for f in self.fields))

    def bucket_counts(
        self, side: Side, raw_ids: np.ndarray, times: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Per field of `side`, how often each bucket's ids occur in raw rows (rows, width);
        row r counts `times[r]` times (a user row: once per impression of the user)."""
        rows, _ = self.hash_side(side, raw_ids, np.zeros(np.shape(raw_ids), np.float32))
        w = None if times is None else np.broadcast_to(np.asarray(times)[:, None], rows.shape)
        out = {}
        for f, cols in self.columns(side):
            r = rows[:, cols] - f.offset
            keep = (r >= 0) & (r < f.buckets)  # not padding, not an already shared row
            out[f.name] = np.bincount(
                r[keep], None if w is None else w[:, cols][keep], minlength=f.buckets
            )
        return out

    def with_rare(
        self, counts: Mapping[str, np.ndarray], min_count: int | Mapping[str, int]
    ) -> FeatureContract:
        """Buckets seen fewer than `min_count` times in `counts` (bucket_counts over the
        training data, by field; a shared table sums its fields') share one row per table,
        which also serves ids never seen: rare ids learn one embedding from all their rows
        instead of memorising their few labels. `min_count` may be one per table name. The rows
        are laid out again (each table gains its shared row). min_count <= 1: unchanged."""
        changes = {}
        for t, members in self._tables():
            m = min_count.get(t, 1) if isinstance(min_count, Mapping) else min_count
            if m <= 1 or members[0].numeric:
                continue
            seen = sum(np.asarray(counts[f.name]) for f in members)
            changes[t] = {"rare": pack_mask(seen < m)}
        if not changes:
            return self
        return self._laid_out(changes)

    def with_numeric(self, values: Mapping[str, np.ndarray], buckets: int = 32) -> FeatureContract:
        """Numeric item fields appended after the item fields (in `values`' order), each with
        up to `buckets` buckets: bounds at the quantiles of its training values (NaN: missing,
        left out), repeated quantiles merged, so a column of few distinct values gets one bucket
        per value. Call before fit_buckets."""
        if buckets < 2:
            raise ValueError(f"numeric buckets must be >= 2, got {buckets}")
        taken = {f.name for f in self.fields}
        added = []
        for name, v in values.items():
            if name in taken or name in ALL_FIELDS:
                raise ValueError(f"numeric column {name!r} has the name of a feature field")
            bounds = quantile_bounds(name, v, buckets)
            added.append(Field(name, "item", 1, buckets=len(bounds) + 1, bounds=bounds))
        return dataclasses.replace(self, fields=self.fields + tuple(added))

    def with_bounds(
        self, values: Mapping[str, np.ndarray], buckets: Mapping[str, int]
    ) -> FeatureContract:
        """The named numeric fields (a spec's numeric and cross features) given quantile
        bounds fitted on their training values, as with_numeric's. Call before fit_buckets."""
        fields = []
        for f in self.fields:
            if f.name in values:
                bounds = quantile_bounds(f.name, values[f.name], buckets[f.name])
                f = dataclasses.replace(f, buckets=len(bounds) + 1, bounds=bounds)
            fields.append(f)
        return dataclasses.replace(self, fields=tuple(fields))

    def numeric_rows(self, f: Field, values: np.ndarray) -> np.ndarray:
        """Embedding rows of a numeric field's values (any shape; NaN and infinities are not
        allowed here: a missing number is padding before it gets here)."""
        v = np.asarray(values, dtype=np.float32)
        return f.offset + np.searchsorted(np.asarray(f.bounds), v, side="right").astype(np.int64)

    # ---- shape --------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return all(f.buckets > 0 for f in self.fields)

    @property
    def num_rows(self) -> int:
        """Rows of the embedding table, padding row included."""
        return max(f.offset + f.rows for f in self.fields)

    def side_fields(self, side: Side) -> tuple[Field, ...]:
        return tuple(f for f, _ in self._layout[side])

    def width(self, side: Side) -> int:
        return sum(f.max_len for f in self.side_fields(side))

    def columns(self, side: Side) -> list[tuple[Field, slice]]:
        """(field, column slice) pairs of a side, in contract order."""
        return list(self._layout[side])

    def counted_fields(self) -> list[tuple[Field, slice]]:
        """The item side's fields whose values count a user x item match, with their columns:
        Ali-CCP's combination fields (508: the user's count for the item's category, 509, 702,
        853), which a request or a file carries with each impression. Their ids are opaque; a
        single-valued one's value is its count (a weight, where the pooling weighs: `weighted`).
        A spec has none: its crosses are numeric features that count from both sides."""
        if self.spec is not None:
            return []
        return [(f, c) for f, c in self.columns("item") if f.name in COMBINATION_FIELDS]

    def combines(self) -> dict[str, tuple[str, str]]:
        """Ali-CCP's combination fields this contract reads, each with the (user list, item
        field) whose matches it counts (COMBINES), where the contract reads both of those too."""
        names = {f.name for f in self.fields}
        return {c: (lst, item) for lst, item, c in self.aligned_pairs() if c in names}

    def aligned_pairs(self) -> list[tuple[str, str, str]]:
        """(user list, item field, combination field) for each of Ali-CCP's combination fields
        whose two fields this contract reads, whether it reads the combination field itself or
        leaves it out (`without`): what an aligned interaction rebuilds from ids
        (training/alignment.py). A spec has none."""
        if self.spec is not None:
            return []
        names = {f.name for f in self.fields}
        return [(lst, item, c) for c, (lst, item) in COMBINES.items() if {lst, item} <= names]

    @functools.cached_property
    def _layout(self) -> dict[str, tuple[tuple[Field, slice], ...]]:
        # Computed once per contract: the reader asks for it on every line.
        out = {}
        for side in ("user", "item"):
            cols, start = [], 0
            for f in (f for f in self.fields if f.side == side):
                cols.append((f, slice(start, start + f.max_len)))
                start += f.max_len
            out[side] = tuple(cols)
        return out

    def side_rows(self, side: Side) -> tuple[int, int]:
        """[first, end) of the embedding rows the side's fields own (fields of a side are
        contiguous in contract order: user fields first)."""
        tables = {f.table: (f.offset, f.rows) for f in self.side_fields(side)}
        lo = min(o for o, _ in tables.values())
        hi = max(o + r for o, r in tables.values())
        if sum(r for _, r in tables.values()) != hi - lo:
            raise ValueError(f"the {side} fields do not own one contiguous range of rows")
        return lo, hi

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"field {name!r} is not in the feature contract")

    # ---- ids -> rows --------------------------------------------------------------------
    def field_rows(self, name: str, raw_ids: np.ndarray) -> np.ndarray:
        """The embedding rows of one id field's raw ids (any shape; a negative id: PAD_ROW), as
        `hash_side` gives them in the field's columns."""
        if not self.fitted:
            raise RuntimeError("the feature contract has no bucket sizes yet (fit_buckets)")
        f = self.field(name)
        if f.numeric:
            raise ValueError(f"field {name!r} is numeric: its rows come from values, not ids")
        ids = np.asarray(raw_ids, dtype=np.int64)
        return np.where(ids >= 0, self._rows(f, ids), PAD_ROW)

    def _rows(self, f: Field, ids: np.ndarray) -> np.ndarray:
        """Raw ids (int64, any shape) of id field `f` -> its hashed rows (the rare ids' shared
        row where the field has one); padding is the caller's to mask."""
        salt = np.uint64((self.seed << 32) ^ zlib.crc32(f.table.encode()))
        h = splitmix64(ids.view(np.uint64) ^ salt) & _MASK64
        rows = (h % np.uint64(f.buckets)).astype(np.int64)
        if f.rare:
            rows = np.where(unpack_mask(f.rare, f.buckets)[rows], f.buckets, rows)
        return rows + f.offset

    def hash_side(
        self, side: Side, raw_ids: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw padded arrays (rows, width) of one side -> (embedding rows int64, weights f32).

        Padding is a negative raw id; it maps to PAD_ROW with weight 0."""
        if not self.fitted:
            raise RuntimeError("the feature contract has no bucket sizes yet (fit_buckets)")
        raw_ids = np.asarray(raw_ids, dtype=np.int64)
        values = np.asarray(values)
        out = np.full(raw_ids.shape, PAD_ROW, dtype=np.int64)
        present = raw_ids >= 0
        for f, cols in self.columns(side):
            if f.numeric:
                v = np.asarray(values[:, cols], dtype=np.float32)
                ok = present[:, cols] & np.isfinite(v)
                present[:, cols] = ok
                rows = self.numeric_rows(f, np.where(ok, v, 0.0))
                out[:, cols] = np.where(ok, rows, PAD_ROW)
                continue
            out[:, cols] = np.where(present[:, cols], self._rows(f, raw_ids[:, cols]), PAD_ROW)
        if self.weighted:
            weights = np.where(present, values, 0.0).astype(np.float32)
            for f, cols in self.columns(side):
                if f.numeric:  # a number picks its row; it is not a weight
                    weights[:, cols] = present[:, cols]
        else:
            weights = present.astype(np.float32)
        if self.mean or any(f.pool for f in self.fields):
            for f, cols in self.columns(side):
                if f.max_len > 1 and (f.pool == "mean" or (not f.pool and self.mean)):
                    total = weights[:, cols].sum(axis=1, keepdims=True)
                    weights[:, cols] /= np.where(total > 0, total, 1.0)
        return out, weights

    def encode_entity(
        self, side: Side, features: Mapping[str, tuple[Sequence[int], Sequence[float]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One user or item as {field: (raw ids, values)} -> padded raw (ids, values) rows of the
        side's width. Fields of the other side or unknown to the contract raise KeyError."""
        ids = np.full(self.width(side), -1, dtype=np.int64)
        vals = np.zeros(self.width(side), dtype=np.float32)
        cols = {f.name: (f, c) for f, c in self.columns(side)}
        for name, (fids, fvals) in features.items():
            if name not in cols:
                raise KeyError(f"field {name!r} is not a {side} field of the feature contract")
            f, c = cols[name]
            if len(fids) != len(fvals):
                raise ValueError(f"field {name}: {len(fids)} ids but {len(fvals)} values")
            if len(fids) > f.max_len:
                fids, fvals = truncate(fids, fvals, f.max_len)
            # Lists go straight into the slice: no per-field array round trip (the reader
            # calls this once per line).
            ids[c.start : c.start + len(fids)] = fids
            vals[c.start : c.start + len(fids)] = fvals
        return ids, vals

    def decode_entity(
        self, side: Side, ids: np.ndarray, vals: np.ndarray, keep: Callable | None = None
    ) -> dict[str, tuple[list[int], list[float]]]:
        """One raw row of a side (encode_entity's output, or an encoded split's) -> {field: (raw
        ids, values)} of the fields it has, padding dropped; `keep(field)` picks the fields.
        What the stores hold, and what a request written from a log sends."""
        out = {}
        for f, cols in self.columns(side):
            if keep is not None and not keep(f):
                continue
            i = ids[cols]
            present = i >= 0
            if present.any():
                out[f.name] = (i[present].tolist(), vals[cols][present].tolist())
        return out

    # ---- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "version": self.version,
            "weighted": self.weighted,
            "mean": self.mean,
            "seed": self.seed,
            "hash": "splitmix64(id ^ salt) mod buckets + offset; padding row 0; a bucket in the "
            "field's rare mask reads its shared row, offset + buckets",
            "fields": [_field_dict(f) for f in self.fields],
        }
        if any(f.numeric for f in self.fields):  # (a key of its own: older digests stay)
            d["numeric"] = (
                "a field with bounds: offset + searchsorted(bounds, float32(value), right)"
            )
        if self.spec is not None:
            d["spec"] = self.spec
        if self.keys is not None:
            d["keys"] = self.keys
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureContract:
        # version 2: fields may carry a rare-bucket mask (with_rare); 3: numeric fields;
        # 4: a spec's named features
        if d.get("version") not in (1, 2, 3, 4):
            raise ValueError(f"unsupported feature contract version {d.get('version')!r}")
        c = cls(
            tuple(
                Field(
                    **{
                        **f,
                        "bounds": tuple(f.get("bounds", ())),
                        "cross": tuple(f.get("cross", ())),
                    }
                )
                for f in d["fields"]
            ),
            weighted=bool(d["weighted"]),
            mean=bool(d["mean"]),
            seed=int(d["seed"]),
            spec=d.get("spec"),
            keys=d.get("keys"),
        )
        if c.version != d["version"]:
            raise ValueError(
                f"feature contract version {d['version']} with fields of version {c.version}"
            )
        return c

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _field_dict(f: Field) -> dict:
    d = dataclasses.asdict(f)
    if not f.bounds:  # id fields: the version-1/2 layout
        del d["bounds"]
    else:
        d["bounds"] = list(f.bounds)
    for key in ("source", "dtype", "embedding", "pool", "cross"):  # a spec's (version 4) only
        if not d[key]:
            del d[key]
    if f.cross:
        d["cross"] = list(f.cross)
    return d


def quantile_bounds(name: str, values: np.ndarray, buckets: int) -> tuple[float, ...]:
    """Up to buckets - 1 bounds at the quantiles of the finite values (float32), repeated
    quantiles merged: a column of few distinct values gets one bucket per value."""
    v = np.asarray(values, dtype=np.float32)
    v = v[np.isfinite(v)]
    if not len(v):
        raise ValueError(f"numeric column {name!r} has no values in the training rows")
    q = np.quantile(v, np.arange(1, buckets) / buckets, method="lower")
    return tuple(float(b) for b in np.unique(q.astype(np.float32)))  # buckets - 1 >= 1


def truncate(
    ids: Sequence[int], values: Sequence[float], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most max_len ids: the highest values, in their original order (stable)."""
    ids = np.asarray(ids, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} ids but {len(values)} values")
    if len(ids) <= max_len:
        return ids, values
    keep = np.sort(np.argsort(-values, kind="stable")[:max_len])
    return ids[keep], values[keep]
