"""Build the item feature table (features/items.py) from Ali-CCP files or a Parquet table.

    ranker items build --spec SPEC --out FILE
    ranker items build --data DIR [--split train|test] --out FILE
    ranker items build --table FILE.parquet --out FILE

From a feature spec (features/spec.py, docs/spec.md): its items table, one row per item, the
spec's item features by name and the price column it names (training/tables.py).

From Ali-CCP files: reads the impressions of the split (both splits, train first, when none is
given) in log order and keeps, per item id (field 205), the newest features seen. Ali-CCP logs
carry no price: the table's prices are unknown (NaN) and the fusion then needs a price from the
request.

From a Parquet table (one row per item: `item_id`, a column per item field named by its Ali-CCP
field id, `price`): features/item_source.py says which columns it takes and what it refuses.
Either way the table is written beside FILE and renamed into place, so a service watching FILE
never reads half of it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from features.contract import FeatureContract
from features.items import ItemTable, ItemTableError

log = logging.getLogger("ranker.items")


def build_from_aliccp(data: Path, splits: list[str]) -> ItemTable:
    from training.columnar import read_columnar as read_aliccp  # the same arrays, in columns

    contract = FeatureContract.default()
    parts = [read_aliccp(data, s, contract, orphans="ignore") for s in splits]
    ids = np.concatenate([np.asarray(p.item_ids) for p in parts])
    vals = np.concatenate([np.asarray(p.item_vals) for p in parts])
    return ItemTable.from_rows(contract, ids, vals, source=f"{data} ({', '.join(splits)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker items", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build an item table from an Ali-CCP folder or a table")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="a feature spec: its items table")
    source.add_argument("--data", type=Path, help="a folder in the raw Ali-CCP layout")
    source.add_argument("--table", type=Path, help="a Parquet table, one row per item")
    b.add_argument("--split", choices=("train", "test"), help="with --data; default: both")
    b.add_argument("--out", type=Path, required=True, help="the table file (.npz)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    if args.data is None and args.split is not None:
        b.error("--split goes with --data (a table has no splits)")
    try:
        if args.spec is not None:
            from features.spec import SpecError
            from training.tables import item_table

            try:
                table = item_table(args.spec)
            except SpecError as e:
                b.error(str(e))
        elif args.table is not None:
            from features.item_source import from_parquet  # pyarrow: the train extra

            table = from_parquet(args.table)
        else:
            table = build_from_aliccp(args.data, [args.split] if args.split else ["train", "test"])
    except (FileNotFoundError, ItemTableError) as e:
        b.error(str(e))
    table.save(args.out)
    log.info(
        "%d items from %s into %s (%.1f MB, %.1f s)",
        len(table),
        table.source,
        args.out,
        args.out.stat().st_size / 1e6,
        time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
