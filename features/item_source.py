"""A user's own item table (Parquet or CSV, one row per item) -> the item feature table
(items.py).

    ranker items build --table FILE.parquet --out FILE
    ranker train ... --items FILE.parquet          (numeric columns as features)

The columns, by name (the docs/service.md table says the same):

- `item_id`, integer, required: the table's key, the id `/rank` looks up (`item_ids`, a
  candidate's `item_id`). No nulls, unique, in [0, 2^63 - 1].
- `205`, integer: field 205's feature id where it is not the item id. A null, or no such column:
  the item id, as in Ali-CCP.
- `206`, `207`, `216`, integer: the item's id of that field; null: the item has none.
- `210`, list of integers: the item's ids of that multi-hot field; null or empty: none. A list
  longer than the field's columns (16) keeps what the contract's `truncate` keeps.
- `<field>_weights`, a number (a list of numbers for `210`, as long as its ids list): the field's
  values (Ali-CCP's feature values, a weighted contract's pooling weights), in (0, 1e6]. Null, or
  no such column: 1.
- `price`, a number: the item's price, in [0, 1e9]; null or NaN: unknown (the fusion then needs
  the request's).
- any other numeric column whose name is not a field's (letters, digits and `_`, not starting
  with a digit, at most 32 characters): a numeric item attribute (rating, sales, ...), finite and
  at most 1e18 in size; null or NaN: unknown. A model trained with `--items` takes the table's
  numeric columns (`price` among them) as bucketised features (features/contract.py).

A CSV file has the same columns, one id per cell, except `210` and `210_weights`: ids or
weights separated by spaces or `;` (an empty cell: none).

Which fields are multi-hot is the default feature contract's (`max_len` > 1), and the table has
its layout, so one table serves any model, exactly as a table built from Ali-CCP files.

Anything else is refused, naming what and where: a column it does not know (a misspelt field
column, silently dropped, would serve every item without that field), a user, combination or
context field (they are not an item's own), a wrong type, a null item id, a duplicate item id (a
table has one row per item: two rows of one id are two items' worth of disagreement, and which is
right is the caller's to say), a negative or too large id, a weight or price out of bounds. The
bounds are the request's (service/request.py), so an item served from the table scores as
finitely as one sent inline.

Read with pyarrow (vectorised: flat arrays and offsets, no Python loop per row; only a list
longer than its field's columns with weights goes through `truncate` one row at a time). This
module is the one part of `features/` that needs pyarrow (the `train` extra): the command
imports it, the service never does.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.bounds import MAX_NUMBER as MAX_ATTRIBUTE  # the request's bounds
from features.bounds import MAX_PRICE, MAX_WEIGHT
from features.contract import DEFAULT_MAX_LEN, ITEM_FIELDS, FeatureContract, field_side, truncate
from features.items import ITEM_ID_FIELD, ItemTable, ItemTableError

ITEM_ID = "item_id"
PRICE = "price"
WEIGHTS = "_weights"

ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
SHOWN = 5  # item ids a message names


def from_parquet(path: Path, contract: FeatureContract | None = None) -> ItemTable:
    """Read a user's item table (the columns above; Parquet, or CSV by its `.csv` suffix) into
    an ItemTable with the layout of `contract` (default: FeatureContract.default()), sorted by
    item id; raises ItemTableError naming the column, and the item ids where rows are at
    fault."""
    contract = contract or FeatureContract.default()
    path = Path(path)
    kind = "CSV" if path.suffix.lower() == ".csv" else "Parquet"
    try:
        t = _read_csv(path) if kind == "CSV" else pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ItemTableError(f"unreadable {kind} table {path} ({type(e).__name__}: {e})") from None
    _check_columns(t.column_names, t.schema)
    if ITEM_ID not in t.column_names:
        raise ItemTableError(f"no {ITEM_ID} column (the id of field {ITEM_ID_FIELD} of each row)")
    if t.num_rows == 0:
        raise ItemTableError(f"{path} has no rows")
    cols = {name: t.column(name).combine_chunks() for name in t.column_names}

    if cols[ITEM_ID].null_count:
        raise ItemTableError(f"{ITEM_ID} has {cols[ITEM_ID].null_count} nulls")
    item = _ids(cols[ITEM_ID], ITEM_ID)  # (N,) in the file's order: what messages name
    _refuse_negative(item, item, ITEM_ID)
    order = np.argsort(item, kind="stable")
    item_id = item[order]
    dup = item_id[1:][np.diff(item_id) == 0]
    if len(dup):
        raise ItemTableError(f"{ITEM_ID}: one row per item, and {_named(np.unique(dup))} repeat")

    max_len = {n: contract.field(n).max_len for n in ITEM_FIELDS}
    width = sum(max_len.values())
    ids = np.full((len(item), width), -1, dtype=np.int64)
    vals = np.zeros((len(item), width), dtype=np.float32)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))  # file row -> sorted row
    start = 0
    for name in ITEM_FIELDS:
        c = slice(start, start + max_len[name])
        start = c.stop
        if name not in cols:
            if name == ITEM_ID_FIELD:  # field 205 is the item id
                ids[:, c.start], vals[:, c.start] = item_id, 1.0
            continue
        weights = cols.get(name + WEIGHTS)
        if max_len[name] > 1:
            _multi(cols[name], weights, name, item, rank, ids[:, c], vals[:, c])
            continue
        f_ids, f_vals = _single(cols[name], weights, name, item)
        if name == ITEM_ID_FIELD:  # a null 205 is the item id (value 1)
            absent = f_ids < 0
            f_ids, f_vals = np.where(absent, item, f_ids), np.where(absent, 1.0, f_vals)
        ids[:, c.start], vals[:, c.start] = f_ids[order], f_vals[order]

    price = np.full(len(item), np.nan)
    if PRICE in cols:
        price = _price(cols[PRICE], item)[order]
    numeric = {n: _attribute(cols[n], n, item)[order] for n in t.column_names if _is_attribute(n)}
    return ItemTable(item_id, ids, vals, price, max_len, f"{path} ({kind})", numeric)


def _read_csv(path: Path) -> pa.Table:
    """A CSV item table as the Parquet one reads: the multi-hot columns' cells split into lists
    (ids as integers, weights as numbers)."""
    multi = [n for n in ITEM_FIELDS if DEFAULT_MAX_LEN.get(n, 1) > 1]
    text = {c: pa.string() for n in multi for c in (n, n + WEIGHTS)}
    t = pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types=text, strings_can_be_null=True)
    )
    for n in multi:
        for c, typ in ((n, pa.int64()), (n + WEIGHTS, pa.float64())):
            if c not in t.column_names:
                continue
            col = t.column(c).combine_chunks()
            cells = pc.split_pattern_regex(pc.utf8_trim_whitespace(col), r"[\s;]+")
            flat = pc.list_flatten(cells)
            keep = pc.not_equal(flat, "")
            offsets = np.concatenate([[0], np.cumsum(_kept_per_list(cells, keep))])
            values = pc.filter(flat, keep).cast(typ)
            lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
            lists = pc.if_else(col.is_valid(), lists, pa.nulls(len(col), lists.type))
            t = t.set_column(t.column_names.index(c), c, lists)
    return t


def _kept_per_list(cells: pa.Array, keep: pa.Array) -> np.ndarray:
    """How many of each list's items `keep` (a mask over the flattened items) keeps."""
    parent = pc.list_parent_indices(cells).to_numpy()
    return np.bincount(parent, keep.to_numpy(zero_copy_only=False), minlength=len(cells)).astype(
        np.int64
    )


def _is_attribute(name: str) -> bool:
    """A numeric attribute's column: a name that is nothing else (see the module docstring)."""
    if name in (ITEM_ID, PRICE) or name.endswith(WEIGHTS) or not ATTRIBUTE.fullmatch(name):
        return False
    try:
        field_side(name)
    except KeyError:
        return True
    return False


def _attribute(col: pa.Array, name: str, item: np.ndarray) -> np.ndarray:
    v = _floats(col, name)
    bad = ~np.isnan(v) & ~(np.abs(v) <= MAX_ATTRIBUTE)
    if bad.any():
        raise ItemTableError(
            f"column {name}: infinite or over {MAX_ATTRIBUTE:g} in size for {_named(item[bad])}"
        )
    return v


def _check_columns(names: list[str], schema: pa.Schema) -> None:
    known = {ITEM_ID, PRICE, *ITEM_FIELDS, *(f + WEIGHTS for f in ITEM_FIELDS)}
    numeric = {
        n
        for n in names
        if _is_attribute(n)
        and (
            pa.types.is_integer(schema.field(n).type) or pa.types.is_floating(schema.field(n).type)
        )
    }
    unknown = [n for n in names if n not in known and n not in numeric]
    if unknown:
        raise ItemTableError(
            f"unknown columns {', '.join(map(_why_not, unknown))}; an item table has "
            f"{ITEM_ID}, {', '.join(ITEM_FIELDS)}, <field>{WEIGHTS}, {PRICE} and numeric "
            "attributes (a number column named by letters, digits and _, not a field's name)"
        )
    for f in ITEM_FIELDS:
        if f + WEIGHTS in names and f not in names:
            raise ItemTableError(f"column {f}{WEIGHTS} without column {f}")


def _why_not(name: str) -> str:
    try:
        side = field_side(name)
    except KeyError:
        return repr(name)
    kind = "a user field" if side == "user" else "not an item's own field"
    return f"{name!r} ({kind}: it comes with the request)"


def _ids(col: pa.Array, name: str) -> np.ndarray:
    """An integer column as int64 (nulls as -1); anything else is a wrong type."""
    if not pa.types.is_integer(col.type):
        raise ItemTableError(f"column {name} is {col.type}: ids are integers")
    try:
        col = col.cast(pa.int64())  # safe: an unsigned id past 2^63 - 1 is refused
    except pa.ArrowInvalid as e:
        raise ItemTableError(f"column {name}: {e}") from None
    return pc.fill_null(col, -1).to_numpy()


def _floats(col: pa.Array, name: str) -> np.ndarray:
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise ItemTableError(f"column {name} is {col.type}: expected numbers")
    return pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy()


def _single(
    col: pa.Array, weights: pa.Array | None, name: str, item: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A single-valued field: (ids (N,), values (N,)), -1 and 0 where the item has none."""
    if _is_list(col.type):
        raise ItemTableError(f"column {name} is {col.type}: field {name} takes one integer id")
    ids = _ids(col, name)
    _refuse_negative(ids, item, name, _valid(col))
    present = ids >= 0
    if weights is None:
        return ids, present.astype(np.float32)
    w = _floats(weights, name + WEIGHTS)
    w = np.where(np.isnan(w) & ~_valid(weights), 1.0, w)  # a null weight is 1; a NaN is refused
    _check_weights(w[present], item[present], name + WEIGHTS)
    return ids, np.where(present, w, 0.0).astype(np.float32)


def _multi(
    col: pa.Array,
    weights: pa.Array | None,
    name: str,
    item: np.ndarray,
    rank: np.ndarray,
    out_ids: np.ndarray,
    out_vals: np.ndarray,
) -> None:
    """A multi-hot field into its columns `out_ids`/`out_vals` (N, max_len) of the sorted rows
    (`rank`: file row -> sorted row), truncated by the contract's rule."""
    if not _is_list(col.type):
        raise ItemTableError(f"column {name} is {col.type}: field {name} takes a list of ids")
    flat = col.flatten()  # the values of the non-null lists, in row order
    if flat.null_count:
        raise ItemTableError(f"column {name}: null ids in the lists of {_with_null(col, item)}")
    ids = _ids(flat, name)  # (total,)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()  # (N,)
    starts = np.cumsum(lengths) - lengths
    parent = np.repeat(np.arange(len(lengths)), lengths)  # (total,) the file row of each id
    _refuse_negative(ids, item[parent], name)
    pos = np.arange(len(ids)) - starts[parent]  # (total,) the place in its list
    max_len = out_ids.shape[1]
    if weights is None:
        vals = np.ones(len(ids), np.float32)
        keep = pos < max_len  # equal values: truncate keeps the first max_len, in order
    else:
        vals = _list_weights(weights, lengths, parent, name, item)
        keep = lengths[parent] <= max_len
        for r in np.flatnonzero(lengths > max_len):  # highest values first: the contract's rule
            mine = slice(starts[r], starts[r] + lengths[r])
            kept_ids, kept_vals = truncate(ids[mine], vals[mine], max_len)
            out_ids[rank[r], : len(kept_ids)] = kept_ids
            out_vals[rank[r], : len(kept_ids)] = kept_vals
    rows = rank[parent[keep]]
    out_ids[rows, pos[keep]] = ids[keep]
    out_vals[rows, pos[keep]] = vals[keep]


def _list_weights(
    weights: pa.Array, lengths: np.ndarray, parent: np.ndarray, name: str, item: np.ndarray
) -> np.ndarray:
    """The values of a multi-hot field, flat like its ids; a null list is all ones."""
    wname = name + WEIGHTS
    if not _is_list(weights.type):
        raise ItemTableError(f"column {wname} is {weights.type}: expected lists of numbers")
    if weights.flatten().null_count:
        raise ItemTableError(
            f"column {wname}: null values in the lists of {_with_null(weights, item)}"
        )
    given = _valid(weights)
    w_len = pc.fill_null(pc.list_value_length(weights), 0).to_numpy()
    wrong = given & (w_len != lengths)
    if wrong.any():
        raise ItemTableError(
            f"column {wname}: lists not as long as their ids in {name} for {_named(item[wrong])}"
        )
    out = np.ones(len(parent), np.float64)
    out[given[parent]] = _floats(weights.flatten(), wname)
    _check_weights(out, item[parent], wname)
    return out.astype(np.float32)


def _check_weights(w: np.ndarray, item: np.ndarray, name: str) -> None:
    bad = ~((w > 0) & (w <= MAX_WEIGHT))  # NaN and infinities included
    if bad.any():
        raise ItemTableError(
            f"column {name}: values outside (0, {MAX_WEIGHT:g}] for {_named(np.unique(item[bad]))}"
        )


def _price(col: pa.Array, item: np.ndarray) -> np.ndarray:
    p = _floats(col, PRICE)
    bad = ~np.isnan(p) & ~((p >= 0) & (p <= MAX_PRICE))
    if bad.any():
        raise ItemTableError(
            f"column {PRICE}: negative, infinite or over {MAX_PRICE:g} for {_named(item[bad])}"
        )
    return p


def _refuse_negative(
    ids: np.ndarray, item: np.ndarray, name: str, valid: np.ndarray | None = None
) -> None:
    bad = ids < 0 if valid is None else valid & (ids < 0)
    if bad.any():
        raise ItemTableError(f"column {name}: negative ids for {_named(np.unique(item[bad]))}")


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _valid(col: pa.Array) -> np.ndarray:
    return col.is_valid().to_numpy(zero_copy_only=False)


def _with_null(col: pa.Array, item: np.ndarray) -> str:
    """The items whose lists in `col` hold a null."""
    parent = pc.list_parent_indices(col).to_numpy()
    return _named(item[np.unique(parent[_valid(col.flatten()) == 0])])


def _named(item: np.ndarray) -> str:
    """'item ids 5, 9, 12, 20, 31 (and 3 more)'."""
    more = f" (and {len(item) - SHOWN} more)" if len(item) > SHOWN else ""
    return f"item ids {', '.join(map(str, item[:SHOWN].tolist()))}{more}"
