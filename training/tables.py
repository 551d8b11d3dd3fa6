"""Training data from a feature spec's named tables (features/spec.py): Parquet read in columns
with PyArrow, joined by the spec's keys, encoded into the same raw arrays (`EncodedSplit`) the
Ali-CCP readers fill, so training, export and serving need nothing else.

What a split is. The events table has one row per impression (several per request: the
request key groups them); the users and items tables one row per user and item, joined to the
events by the keys. A user or item the side table lacks keeps only the features read from its
key column (the key is on every event); its other features are missing (padding rows). A
context feature is an events column, a cross is computed from the user's list and the item's
values by `features.values.count_in`, the function the service calls.

Values become raw ids as the contract's fields say (features/values.py): integers as they are,
texts by a stable hash of each distinct text (a column's dictionary, so millions of rows cost one
hash per distinct value). A list longer than its feature's `max_len` keeps its highest weights
(ties: first in the list) in list order, as `features.contract.truncate` does online.

Checks before any row is read: the spec's (features/spec.py) and `check_columns` against every
table's schema (the test events' schema must match the train events' on the columns read). While
reading: labels must be 0/1, keys unique in a side table and present on every event, weights
finite in (0, 1e6] and as long as their ids' lists. Each refusal is a SpecError naming the
table, the column and a row.

The first cut takes one row per user; a users table with a time column for a point-in-time
join (the user as of each event) is the planned extension (docs/spec.md).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import spec as S
from features.bounds import MAX_NUMBER, MAX_PRICE, MAX_WEIGHT
from features.contract import FeatureContract
from features.values import ListCounts, int_ids, text_ids
from training.encoded import EncodedSplit, OrphanPolicy, ReadReport
from training.progress import Progress

log = logging.getLogger(__name__)


BATCH_ROWS = 1 << 20


# ---- schemas ----------------------------------------------------------------------------------
def column_type(t: pa.DataType) -> str:
    """An Arrow type as the spec's checks name it: int, text, float, bool or list<...>."""
    if pa.types.is_dictionary(t):
        return column_type(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{column_type(t.value_type)}>"
    if pa.types.is_boolean(t):
        return S.BOOL
    if pa.types.is_integer(t):
        return S.INT
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return S.FLOAT
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return S.TEXT
    return str(t)


def _schema(spec: S.Spec, table: str, split: str = "train") -> dict[str, str]:
    path = spec.table_path(table, split)
    what = f"tables.events.{split}" if table == "events" else f"tables.{table}"
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise S.SpecError(f"{spec.source}: {what}: no file {path}") from None
    except (OSError, pa.ArrowException) as e:
        raise S.SpecError(f"{spec.source}: {what}: {path} is not a Parquet file ({e})") from None
    return {f.name: column_type(f.type) for f in schema}


def check_tables(spec: S.Spec) -> dict[str, str]:
    """Every table's schema against the spec (before any row is read); the id features' value
    types (int or text)."""
    if spec.layout != "tables":
        raise S.SpecError(
            f"{spec.source}: layout: {spec.layout} is read from a folder of its files: "
            "ranker train --data DIR"
        )
    schemas = {"events": _schema(spec, "events")}
    for t in ("users", "items"):
        if getattr(spec, t):
            schemas[t] = _schema(spec, t)
    dtypes = S.check_columns(spec, schemas)
    test = _schema(spec, "events", "test")
    for col in _event_columns(spec):
        if test.get(col) != schemas["events"][col]:
            got = test.get(col, "missing")
            raise S.SpecError(
                f"{spec.source}: tables.events.test: column {col!r} is {got}, in the train "
                f"events {schemas['events'][col]}"
            )
    return dtypes


def _event_columns(spec: S.Spec) -> list[str]:
    cols = [spec.keys["user"], spec.keys["item"], *spec.labels.values()]
    if spec.keys["request"]:
        cols.append(spec.keys["request"])
    cols += [f.column for f in (*spec.side("context"), *spec.side("event"))]
    for f in (*spec.per_event("user"), *spec.per_event("item")):
        cols += [f.column, *([f.weights] if f.weights else [])]
    return list(dict.fromkeys(cols))


def _read_as(contract: FeatureContract, f: S.Feature) -> str:
    """How a feature's column becomes raw ids: as the values it holds (int or text), or as they
    are where it holds raw ids already (`raw`: the impression log's)."""
    return S.INT if f.raw else contract.field(f.name).dtype


# ---- columns -> raw arrays --------------------------------------------------------------------
def raw_ids(column: pa.ChunkedArray | pa.Array, dtype: str) -> np.ndarray:
    """(n,) int64 raw ids of an id column (or a list column's flattened values); -1 where null
    (or an empty text: a request cannot send one, so a table's is missing too). An unsigned
    integer past 2^63 wraps, then loses its sign bit, as every integer id does."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if dtype == S.TEXT:
        enc = pc.dictionary_encode(arr)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        words = enc.dictionary.to_pylist()
        hashed = np.where([w == "" for w in words], -1, text_ids(words)) if words else text_ids([])
        valid = ~np.asarray(pc.is_null(arr))
        out = np.full(len(arr), -1, dtype=np.int64)
        out[valid] = hashed[codes[valid].astype(np.int64)]
        return out
    valid = ~np.asarray(pc.is_null(arr))
    vals = np.asarray(pc.fill_null(arr.cast(pa.int64(), safe=False), 0))
    return np.where(valid, int_ids(vals), -1)


def numbers(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n,) float64, NaN where null (an integer past 2^53 to its nearest float)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(pc.fill_null(arr.cast(pa.float64(), safe=False), np.nan), dtype=np.float64)


def padded_list(
    ids: pa.ChunkedArray,
    weights: pa.ChunkedArray | None,
    dtype: str,
    max_len: int,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """A list column (and its weights' list column) -> (n, max_len) raw ids (-1 padding) and
    weights; null elements dropped, long lists keeping their max_len highest weights."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    n = len(arr)
    arr = pc.fill_null(arr, pa.scalar([], arr.type))
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    flat = raw_ids(arr.flatten(), dtype)
    if weights is not None:
        w_arr = weights.combine_chunks() if isinstance(weights, pa.ChunkedArray) else weights
        w_arr = pc.fill_null(w_arr, pa.scalar([], w_arr.type))
        w_off = np.asarray(w_arr.offsets, dtype=np.int64)
        if not np.array_equal(w_off - w_off[0], offsets):
            row = int(np.flatnonzero(np.diff(w_off) != np.diff(offsets))[0])
            raise S.SpecError(f"{where}: row {row}: the weights list is not as long as its ids'")
        w = numbers(w_arr.flatten())
        bad = ~((w > 0) & (w <= MAX_WEIGHT))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(offsets, k, side="right") - 1)
            raise S.SpecError(
                f"{where}: row {row}: weight {w[k]} is not in (0, {MAX_WEIGHT:g}] (a weight "
                "scales an embedding, as in a request)"
            )
    else:
        w = np.ones(len(flat), dtype=np.float64)
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    keep = flat >= 0
    flat, w, row = flat[keep], w[keep], row[keep]
    first = np.searchsorted(row, np.arange(n))  # each row's first element in the kept arrays
    pos = np.arange(len(flat)) - first[row]
    lengths = np.bincount(row, minlength=n)
    if (lengths > max_len).any():
        long = (lengths > max_len)[row]
        idx = np.flatnonzero(long)
        w32 = w.astype(np.float32)  # ranked as truncate ranks them online (float32)
        order = idx[np.lexsort((pos[idx], -w32[idx], row[idx]))]
        r = row[order]
        rank = np.arange(len(order)) - np.searchsorted(r, r)
        keep = ~long
        keep[order[rank < max_len]] = True
        flat, w, row = flat[keep], w[keep], row[keep]
        pos = np.arange(len(flat)) - np.searchsorted(row, np.arange(n))[row]
    out_ids = np.full((n, max_len), -1, dtype=np.int64)
    out_w = np.zeros((n, max_len), dtype=np.float32)
    out_ids[row, pos] = flat
    out_w[row, pos] = w.astype(np.float32)
    return out_ids, out_w


# ---- the side tables --------------------------------------------------------------------------
@dataclasses.dataclass
class SideTable:
    """A users or items table as raw arrays of the features it holds, by sorted key."""

    keys: np.ndarray  # (M,) int64 raw ids of the key, sorted
    ids: np.ndarray  # (M, side width) int64, -1 padding
    vals: np.ndarray  # (M, side width) float32
    numbers: dict = dataclasses.field(default_factory=dict)  # column -> (M,) float64

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.keys):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return pos, self.keys[pos] == keys


def _own(spec: S.Spec, contract: FeatureContract, side: str) -> list[tuple]:
    """(spec feature, contract column slice) of the features a side table holds (not its key
    column, which every event has)."""
    cside = "user" if side == "user" else "item"
    cols = {f.name: c for f, c in contract.columns(cside)}
    return [(f, cols[f.name]) for f in spec.side(side) if f.column != spec.keys[side]]


def read_side(
    spec: S.Spec, contract: FeatureContract, side: str, numbers_of: tuple[str, ...] = ()
) -> SideTable:
    """A side table's rows as raw arrays of the contract's side, by sorted key (the features
    read from the key column filled too); `numbers_of`: further numeric columns to read, in the
    same order (`SideTable.numbers`: the items' price)."""
    table_name = "users" if side == "user" else "items"
    cside = "user" if side == "user" else "item"
    width = contract.width(cside)
    own = _own(spec, contract, side)
    key_col = spec.keys[side]
    if not getattr(spec, table_name):
        return SideTable(
            np.empty(0, np.int64), np.empty((0, width), np.int64), np.empty((0, width), np.float32)
        )
    path = spec.table_path(table_name)
    cols = list(
        dict.fromkeys(
            [
                key_col,
                *(f.column for f, _ in own),
                *(f.weights for f, _ in own if f.weights),
                *numbers_of,
            ]
        )
    )
    t = pq.read_table(path, columns=cols)
    where = f"{spec.source}: tables.{table_name} ({path.name})"
    keys = raw_ids(t[key_col], _key_dtype(t.schema.field(key_col).type))
    if (keys < 0).any():
        raise S.SpecError(
            f"{where}: column {key_col!r}: row {int(np.flatnonzero(keys < 0)[0])} has no key"
        )
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1])
    if dup.size:
        row = int(order[dup[0] + 1])
        raise S.SpecError(
            f"{where}: column {key_col!r}: the key of row {row} ({t[key_col][row].as_py()!r}) "
            f"is on more than one row; the table holds one row per {side}"
        )
    ids = np.full((len(t), width), -1, dtype=np.int64)
    vals = np.zeros((len(t), width), dtype=np.float32)
    for f, c in own:
        fw = f"{where}: column {f.column!r}"
        _fill(
            ids,
            vals,
            c,
            f,
            _read_as(contract, f),
            t[f.column],
            t[f.weights] if f.weights else None,
            fw,
        )
    _key_features(spec, contract, side, ids, vals, keys)
    extra = {n: numbers(t[n])[order] for n in numbers_of}
    return SideTable(sk, ids[order], vals[order], extra)


def _key_dtype(t: pa.DataType) -> str:
    return S.TEXT if column_type(t) == S.TEXT else S.INT


def _fill(ids, vals, c: slice, f: S.Feature, dtype: str, column, weights, where: str) -> None:
    """One feature's columns of raw arrays from its table column."""
    if f.kind == "id":
        r = raw_ids(column, dtype)
        ids[:, c.start] = r
        vals[:, c.start] = np.where(r >= 0, 1.0, 0.0)
    elif f.kind == "ids":
        ids[:, c], vals[:, c] = padded_list(column, weights, dtype, f.max_len, where)
    else:  # numeric: id 0 with the number as its value; missing (null, NaN, inf) is padding
        v = numbers(column)
        ok = np.isfinite(v) & (np.abs(v) <= MAX_NUMBER)
        ids[:, c.start] = np.where(ok, 0, -1)
        vals[:, c.start] = np.where(ok, v, 0.0)


# ---- a split ----------------------------------------------------------------------------------
def read_split(
    spec: S.Spec,
    contract: FeatureContract,
    split: str,
    users: SideTable,
    items: SideTable,
    orphans: OrphanPolicy = "drop",
    keep_all: bool = False,
    lists: dict | None = None,
    out_dir: Path | None = None,
) -> EncodedSplit:
    """One split's events joined to the side tables, as raw arrays (`sample_id`: the event's
    row number in its table). `keep_all` keeps every event whatever its labels (predict);
    `lists` (cross_lists) is reused across splits. Read in batches of BATCH_ROWS events, each
    batch's rows (crosses counted) written into the split's arrays: with `out_dir` those are
    .npy files mapped from disk (a table of any size in the memory of a batch and the page
    cache), else arrays in memory."""
    lists = cross_lists(contract, users) if lists is None else lists
    path = spec.table_path("events", split)
    pf = pq.ParquetFile(path)
    total = pf.metadata.num_rows
    where = f"{spec.source}: tables.events.{split} ({path.name})"
    report = ReadReport()
    progress = Progress(log, f"read {path.name}", total, unit="rows")
    width = contract.width("item")
    alloc = _allocator(out_dir)
    item_ids = alloc("item_ids", (total, width), np.int64)
    item_vals = alloc("item_vals", (total, width), np.float32)
    small: dict[str, list[np.ndarray]] = {}
    done = n = 0
    per_event = bool(spec.per_event("user"))
    event_users: list[tuple[np.ndarray, np.ndarray]] = []  # per batch: its requests' user rows
    seen: dict[tuple[int, int], int] = {}  # (request, user) -> its user row, across batches
    for batch in pf.iter_batches(BATCH_ROWS, columns=_event_columns(spec)):
        t = pa.Table.from_batches([batch])
        part = _events(spec, contract, t, items, where, done, orphans, report, keep_all)
        kept = part.pop("table")
        if per_event:  # the user as of each request: its first event's user columns
            done_users = sum(len(u) for u, _ in event_users)
            u_ids, u_vals, row = _event_users(spec, contract, kept, part, where, seen, done_users)
            earlier = row < done_users  # a request begun in an earlier batch: its row there
            prior = np.unique(row[earlier])
            p_ids, p_vals = _rows_at(event_users, prior, u_ids.shape[1])
            lists_b = _lists(
                contract, np.concatenate([p_ids, u_ids]), np.concatenate([p_vals, u_vals])
            )
            local = np.where(earlier, np.searchsorted(prior, row), len(prior) + row - done_users)
            _crosses(contract, part["item_ids"], part["item_vals"], lists_b, local)
            part["row_user"] = row
            event_users.append((u_ids, u_vals))
        else:
            pos, found = users.find(part["user_key"])
            row = np.where(found, pos, len(users.keys))  # past every list's rows: nothing found
            _crosses(contract, part["item_ids"], part["item_vals"], lists, row)
        k = len(part["click"])
        item_ids[n : n + k], item_vals[n : n + k] = part.pop("item_ids"), part.pop("item_vals")
        for name, values in part.items():
            small.setdefault(name, []).append(values)
        n += k
        done += len(t)
        progress.update(done)
    progress.finish()
    report.lines = total
    cat = {k: _joined(v) for k, v in small.items()}
    keys = cat.get("user_key", np.empty(0, np.int64))
    groups = cat.get("request_key", np.empty(0, np.int64))
    session: np.ndarray | None
    if per_event:  # one user row per request, as Ali-CCP's sessions: the rows are the requests
        width = contract.width("user")
        u_ids = _joined([u for u, _ in event_users] or [np.empty((0, width), np.int64)])
        u_vals = _joined([v for _, v in event_users] or [np.empty((0, width), np.float32)])
        row_user, session = cat.get("row_user", np.empty(0, np.int64)), None
    else:
        # One user row per user (the users table's); each row's request (its user's, so one
        # user in two requests is two) is what training shuffles and splits by, as it does
        # Ali-CCP's sessions: a batch then mixes many requests.
        uniq, row_user = np.unique(keys, return_inverse=True)
        pairs = np.stack([groups, keys], axis=1)
        _, session = np.unique(pairs, axis=0, return_inverse=True)
        session = session.reshape(-1).astype(np.int64)
        u_ids, u_vals = _users(spec, contract, users, uniq)
    empty = np.empty(0, np.uint8)
    split_data = EncodedSplit(
        u_ids,
        u_vals,
        item_ids[:n],
        item_vals[:n],
        row_user.reshape(-1).astype(np.int64),
        cat.get("click", empty),
        cat.get("conv", empty),
        cat.get("sample_id", np.empty(0, np.int64)),
        report,
        session=session,
    )
    report.rows = len(split_data)
    return split_data


def _allocator(out_dir: Path | None):
    """Arrays in memory, or .npy files in `out_dir` mapped from disk (written anew)."""
    if out_dir is None:
        return lambda name, shape, dtype: np.empty(shape, dtype=dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def alloc(name: str, shape: tuple, dtype) -> np.ndarray:
        return np.lib.format.open_memmap(
            out_dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
        )

    return alloc


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The batches' arrays as one (no copy for a split read in one batch)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _users(spec, contract, users: SideTable, keys: np.ndarray):
    """The user rows of `keys`: the users table's rows (one gather into the output), a user it
    lacks its key features alone."""
    pos, found = users.find(keys)
    row = np.where(found, pos, len(users.keys))  # the last row: an empty one
    width = contract.width("user")
    ids = np.concatenate([users.ids, np.full((1, width), -1, np.int64)]).take(row, axis=0)
    vals = np.concatenate([users.vals, np.zeros((1, width), np.float32)]).take(row, axis=0)
    _key_features(spec, contract, "user", ids, vals, keys)
    return ids, vals


def _key_features(spec, contract, side: str, ids, vals, keys: np.ndarray) -> None:
    """Features read from the side's key column: the key's raw id on every row."""
    cols = {f.name: c for f, c in contract.columns("user" if side == "user" else "item")}
    for f in spec.side(side):
        if f.column == spec.keys[side]:
            c = cols[f.name]
            ids[:, c.start], vals[:, c.start] = keys, 1.0


def _events(spec, contract, t: pa.Table, items: SideTable, where, first, orphans, report, keep_all):
    n = len(t)
    labels = {}
    for role, col in spec.labels.items():
        v = numbers(t[col])
        bad = ~((v == 0) | (v == 1))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise S.SpecError(
                f"{where}: column {col!r} (labels.{role}): row {first + k} is {v[k]}, not 0 or 1"
            )
        labels[role] = v.astype(np.uint8)
    keys = {}
    for side in ("user", "item"):
        col = spec.keys[side]
        k = raw_ids(t[col], _key_dtype(t.schema.field(col).type))
        if (k < 0).any():
            r = int(np.flatnonzero(k < 0)[0])
            raise S.SpecError(f"{where}: column {col!r} (keys.{side}): row {first + r} is null")
        keys[side] = k
    col = spec.keys["request"]
    request = np.zeros(n, np.int64)
    if col:
        request = raw_ids(t[col], _key_dtype(t.schema.field(col).type))
    click, conv = labels["click"], labels["conversion"]
    orphan = (conv == 1) & (click == 0)
    report.orphan_conversions += int(orphan.sum())
    keep = np.ones(n, bool)
    if orphans == "drop" and not keep_all:
        keep = ~orphan
        report.dropped_orphans += int(orphan.sum())
    elif orphans == "click":
        click = np.where(orphan, 1, click).astype(np.uint8)
    conv = (conv & click).astype(np.uint8)
    rows = np.flatnonzero(keep)
    if len(rows) < n:
        t = t.take(pa.array(rows))
        keys = {side: k[rows] for side, k in keys.items()}
    # the items table's rows, gathered once into the output (an item it lacks: an empty row)
    pos, found = items.find(keys["item"])
    row = np.where(found, pos, len(items.keys))
    width = contract.width("item")
    ids = np.concatenate([items.ids, np.full((1, width), -1, np.int64)]).take(row, axis=0)
    vals = np.concatenate([items.vals, np.zeros((1, width), np.float32)]).take(row, axis=0)
    _key_features(spec, contract, "item", ids, vals, keys["item"])
    cols = {f.name: c for f, c in contract.columns("item")}
    for f in (*spec.side("context"), *spec.side("event"), *spec.per_event("item")):
        _fill(
            ids,
            vals,
            cols[f.name],
            f,
            _read_as(contract, f),
            t[f.column],
            t[f.weights] if f.weights else None,
            f"{where}: column {f.column!r}",
        )
    return {
        "table": t,
        "user_key": keys["user"],
        "request_key": request[rows],
        "item_ids": ids,
        "item_vals": vals,
        "click": click[rows],
        "conv": conv[rows],
        "sample_id": (first + rows).astype(np.int64),
    }


def cross_lists(contract: FeatureContract, users: SideTable) -> dict[str, ListCounts]:
    """The users table's lists that crosses count in, indexed once (features.values): by the
    table's rows (one per user: request rows repeat them, a tenth of the work); a user the
    table lacks has empty lists (its row: `len(users.keys)`, past them)."""
    return _lists(contract, users.ids, users.vals)


def _lists(contract: FeatureContract, ids: np.ndarray, vals: np.ndarray) -> dict[str, ListCounts]:
    ucols = {f.name: c for f, c in contract.columns("user")}
    return {
        name: ListCounts(ids[:, ucols[name]], vals[:, ucols[name]])
        for name in dict.fromkeys(f.cross[0] for f in contract.fields if f.cross)
    }


def _rows_at(batches: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray, width: int):
    """The user rows at `rows` (sorted, split-wide numbers) of the batches' (ids, values)."""
    starts = np.cumsum([0, *(len(u) for u, _ in batches)])
    which = np.searchsorted(starts, rows, side="right") - 1
    parts = [
        (batches[b][0][rows[which == b] - starts[b]], batches[b][1][rows[which == b] - starts[b]])
        for b in np.unique(which)
    ]
    if not parts:
        return np.empty((0, width), np.int64), np.empty((0, width), np.float32)
    return np.concatenate([p for p, _ in parts]), np.concatenate([v for _, v in parts])


def _event_users(spec, contract, t: pa.Table, part: dict, where: str, seen: dict, done: int):
    """A batch's users read from its events (a spec with no users table): one user row per
    request, from its first event (as the impression log and `ranker join` write them: the
    user's values on each request's first row only), and each event's row among all the
    split's user rows (`done` of them made by earlier batches; `seen`: (request, user) -> row,
    so a request that began in an earlier batch keeps its row)."""
    pairs = np.stack([part["request_key"], part["user_key"]], axis=1)
    uniq, first, row = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
    known = [seen.get((int(r), int(u))) for r, u in uniq]
    new = np.array([k for k, at in enumerate(known) if at is None], dtype=np.int64)
    rows_of = np.array([-1 if at is None else at for at in known], dtype=np.int64)
    rows_of[new] = done + np.arange(len(new))
    for k in new.tolist():
        seen[(int(uniq[k][0]), int(uniq[k][1]))] = int(rows_of[k])
    first = first[new]
    width = contract.width("user")
    ids = np.full((len(first), width), -1, dtype=np.int64)
    vals = np.zeros((len(first), width), dtype=np.float32)
    firsts = t.take(pa.array(first))
    cols = {f.name: c for f, c in contract.columns("user")}
    for f in spec.per_event("user"):
        _fill(
            ids,
            vals,
            cols[f.name],
            f,
            _read_as(contract, f),
            firsts[f.column],
            firsts[f.weights] if f.weights else None,
            f"{where}: column {f.column!r}",
        )
    _key_features(spec, contract, "user", ids, vals, part["user_key"][first])
    return ids, vals, rows_of[row.reshape(-1)]


def _crosses(
    contract: FeatureContract,
    item_ids: np.ndarray,
    item_vals: np.ndarray,
    lists: dict[str, ListCounts],
    row: np.ndarray,
) -> None:
    """Each cross field's value on every event (in place), from its user's list (`row`: the
    event's user row in `lists`) and its item key: the same count (features.values) the
    service makes per request."""
    icols = {f.name: c for f, c in contract.columns("item")}
    for f, c in contract.columns("item"):
        if f.source == "cross":
            v = lists[f.cross[0]].count(row, item_ids[:, icols[f.cross[1]]])
            item_ids[:, c.start], item_vals[:, c.start] = 0, v


# ---- the whole read ---------------------------------------------------------------------------
def load(
    spec_path: Path, seed: int = 0, orphans: OrphanPolicy = "drop", out_dir: Path | None = None
) -> tuple[S.Spec, FeatureContract, EncodedSplit, EncodedSplit]:
    """The spec checked against its tables, both splits read (into `out_dir`/spec-<split>/,
    mapped from disk, when given); the contract has its numeric bounds but no bucket sizes yet
    (training.fitting.fit_contract)."""
    spec = S.load(spec_path)
    dtypes = check_tables(spec)
    contract = FeatureContract.from_spec(spec, dtypes, seed)
    users = read_side(spec, contract, "user")
    items = read_side(spec, contract, "item")
    log.info(
        "spec %s: %d users, %d items in the side tables",
        spec.source,
        len(users.keys),
        len(items.keys),
    )
    lists = cross_lists(contract, users)
    train, test = (
        read_split(
            spec,
            contract,
            split,
            users,
            items,
            orphans,
            lists=lists,
            out_dir=None if out_dir is None else Path(out_dir) / f"spec-{split}",
        )
        for split in ("train", "test")
    )
    try:
        contract = contract.with_bounds(numeric_values(contract, train), _numeric_buckets(spec))
    except ValueError as e:  # a numeric feature with no value in the training rows
        raise S.SpecError(f"{spec.source}: features: {e}") from None
    return spec, contract, train, test


def _numeric_buckets(spec: S.Spec) -> dict[str, int]:
    return {f.name: f.buckets for f in spec.features if f.kind == "numeric"}


def numeric_values(contract: FeatureContract, s: EncodedSplit) -> dict[str, np.ndarray]:
    """Each numeric (and cross) field's values over the split's impressions (a user's once per
    impression), missing ones left out: what its bounds are fitted on."""
    out = {}
    for side in ("user", "item"):
        for f, c in contract.columns(side):
            if f.source and not f.dtype:  # numeric and cross: their values pick bucket rows
                ids = s.user_ids[:, c.start] if side == "user" else s.item_ids[:, c.start]
                v = s.user_vals[:, c.start] if side == "user" else s.item_vals[:, c.start]
                if side == "user":
                    ids, v = ids[s.row_user], v[s.row_user]
                out[f.name] = v[ids >= 0]
    return out


def read_truth(spec_path: Path, split: str, rows: np.ndarray) -> dict | None:
    """A generated set's true probabilities (truth_{split}.csv beside the spec: one row per
    event, in the events' order) at the split's event rows `rows`; None when absent."""
    path = Path(spec_path).parent / f"truth_{split}.csv"
    if not path.is_file():
        return None
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows.max() >= len(table):
        raise ValueError(f"{path} has {len(table)} rows, fewer than the {split} events")
    return {"p_click": table[rows, 1], "p_conversion": table[rows, 2]}


# ---- the stores' rows -------------------------------------------------------------------------
def side_table(spec_path: Path, side: str) -> tuple[S.Spec, FeatureContract, SideTable]:
    """One side table of a spec (users or items), checked and read alone: what the item table
    and the user stores are built from (the events are not opened)."""
    spec = S.load(spec_path)
    table = "users" if side == "user" else "items"
    if not getattr(spec, table):
        raise S.SpecError(f"{spec.source}: tables.{table}: the spec names no {table} table")
    dtypes = S.check_columns(spec, {table: _schema(spec, table)})
    contract = FeatureContract.from_spec(spec, dtypes)
    extra = (spec.price,) if side == "item" and spec.price else ()
    return spec, contract, read_side(spec, contract, side, extra)


def own_columns(contract: FeatureContract, side: str) -> list[tuple]:
    """(field, columns) of the features a side's store holds: the side's own (not context or
    crosses, which a request or the model computes)."""
    return [(f, c) for f, c in contract.columns(side) if f.source == side]


def item_table(spec_path: Path):
    """The item feature table (features/items.py) of a spec's items table: the item features
    by name (raw ids; a numeric one as id 0 with its value) keyed by the item key's raw id, and
    the price column the spec names (NaN where null)."""
    from features.items import ItemTable

    spec, contract, st = side_table(spec_path, "item")
    cols = own_columns(contract, "item")
    if not cols:
        raise S.SpecError(f"{spec.source}: features: no item feature to put in an item table")
    price = st.numbers.get(spec.price, np.full(len(st.keys), np.nan))
    bad = ~(np.isnan(price) | ((price >= 0) & (price <= MAX_PRICE)))
    if bad.any():
        raise S.SpecError(
            f"{spec.source}: price: column {spec.price!r} holds {price[bad][0]}, outside "
            f"[0, {MAX_PRICE:g}] (a request's bound)"
        )
    return ItemTable(
        st.keys,
        np.concatenate([st.ids[:, c] for _, c in cols], axis=1),
        np.concatenate([st.vals[:, c] for _, c in cols], axis=1),
        price.astype(np.float64),
        {f.name: f.max_len for f, _ in cols},
        f"{spec.table_path('items')} ({spec.source})",
    )


def user_records(spec_path: Path) -> tuple[S.Spec, list[tuple[int, dict]]]:
    """Each user of a spec's users table as (raw key, {feature: (raw ids, values)}), the
    features it has (features/users.py's record), in key order."""
    spec, contract, st = side_table(spec_path, "user")
    own = {f.name for f, _ in own_columns(contract, "user")}
    out = [
        (int(key), contract.decode_entity("user", ids, vals, lambda f: f.name in own))
        for key, ids, vals in zip(st.keys, st.ids, st.vals, strict=True)
    ]
    return spec, out
