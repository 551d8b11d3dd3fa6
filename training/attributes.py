"""Item attributes as model input: an item table's numeric columns joined onto the training rows
by item id (field 205) and added to the contract as bucketised numeric fields.

    ranker train --data DIR --out RUN --items DIR/items.parquet [--numeric price,rating]

The table is the one the service loads for ranking by ids (features/item_source.py: Parquet or
CSV with `item_id`, the item fields, `price` and any other numeric column; or a table built by
`ranker items build`, .npz). The join is a vectorised search of each row's 205 id in the table's
sorted ids; a row whose item the table lacks, or whose value is unknown, has no number (padding),
as a served candidate without one has. The encoded cache is not touched: the numeric columns are
appended to the item side after it is read, which is where the contract lays them out (after the
item fields), so one cache serves runs with and without them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from features.contract import FeatureContract
from features.items import ITEM_ID_FIELD, ItemTable, ItemTableError
from training.encoded import EncodedSplit

log = logging.getLogger("training.attributes")


def read_item_table(path: Path) -> ItemTable:
    """A built table (.npz) or a user's table (Parquet, CSV); SystemExit naming what is wrong."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            return ItemTable.load(path)
        from features.item_source import from_parquet  # pyarrow: the train extra has it

        return from_parquet(path)
    except ItemTableError as e:
        raise SystemExit(f"--items {path}: {e}") from None


def numeric_names(table: ItemTable, wanted: Sequence[str]) -> list[str]:
    """The columns to use: `wanted`, each checked to exist and hold a value; by default every
    numeric column with at least one value (`price` first)."""
    if wanted:
        for name in wanted:
            try:
                v = table.values(name)
            except ItemTableError as e:
                raise SystemExit(f"--numeric: {e}") from None
            if np.isnan(v).all():
                raise SystemExit(f"--numeric: column {name!r} has no values in the item table")
        return list(wanted)
    names = [n for n in ("price", *table.numeric) if not np.isnan(table.values(n)).all()]
    if not names:
        raise SystemExit(f"--items {table.source}: the table has no numeric column with values")
    return names


def join(
    contract: FeatureContract, split: EncodedSplit, table: ItemTable, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) columns for `names` per row of `split`: id 0 and the number where the
    row's item has one, id -1 (padding) and 0 elsewhere."""
    col = {f.name: c for f, c in contract.columns("item")}[ITEM_ID_FIELD]
    item = np.asarray(split.item_ids[:, col.start])
    pos, found = table.index(item)
    found &= item >= 0
    ids = np.full((len(item), len(names)), -1, dtype=np.int64)
    vals = np.zeros((len(item), len(names)), dtype=np.float32)
    for k, name in enumerate(names):
        v = np.where(found, table.values(name)[pos], np.nan).astype(np.float32)
        known = np.isfinite(v)
        ids[known, k], vals[known, k] = 0, v[known]
    return ids, vals


def without_numeric(contract: FeatureContract) -> FeatureContract:
    """The contract the raw files are read with: the numeric fields come from the table."""
    return dataclasses.replace(contract, fields=tuple(f for f in contract.fields if not f.numeric))


def numeric_fields(contract: FeatureContract) -> list[str]:
    return [f.name for f in contract.side_fields("item") if f.numeric]


def append(split: EncodedSplit, contract: FeatureContract, table: ItemTable | None):
    """A split read with without_numeric(contract), with the numeric columns `contract` lays
    out after its item fields joined from `table` (the offline scorer's path: ranker predict).
    A contract without numeric fields returns the split as it is."""
    names = numeric_fields(contract)
    if not names:
        return split
    if table is None:
        raise SystemExit(
            f"this model reads numeric item attributes ({', '.join(names)}): give the item "
            "table it was trained with (--items)"
        )
    return _appended(split, *join(without_numeric(contract), split, table, names))


def _appended(split: EncodedSplit, ids: np.ndarray, vals: np.ndarray) -> EncodedSplit:
    """`split` with columns (ids, vals) after its item side's."""
    return dataclasses.replace(
        split,
        item_ids=np.concatenate([np.asarray(split.item_ids), ids], axis=1),
        item_vals=np.concatenate([np.asarray(split.item_vals), vals], axis=1),
    )


def attach(
    contract: FeatureContract,
    splits: Sequence[EncodedSplit],
    table: ItemTable,
    names: Sequence[str],
    buckets: int,
) -> tuple[FeatureContract, list[EncodedSplit]]:
    """The contract with one numeric field per name (bounds from the first split, the training
    one) and every split with their columns appended to its item side."""
    joined = [join(contract, s, table, names) for s in splits]  # each split joined once
    train_ids, train_vals = joined[0]
    values = {
        n: np.where(train_ids[:, k] >= 0, train_vals[:, k], np.nan) for k, n in enumerate(names)
    }
    for n, v in values.items():
        known = np.isfinite(v)
        log.info(
            "numeric item attribute %s: known for %.1f%% of the training rows",
            n,
            100 * known.mean(),
        )
    try:
        contract = contract.with_numeric(values, buckets)
    except ValueError as e:
        raise SystemExit(f"--items: {e}") from None
    return contract, [_appended(s, *cols) for s, cols in zip(splits, joined, strict=True)]
