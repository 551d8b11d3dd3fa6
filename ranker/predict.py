"""Score a split offline, one probability triple per impression, through the service's own
engine and feature contract.

    ranker predict --model DIR --spec SPEC --split test --out FILE.csv
    ranker predict --model DIR --data DIR --split test --out FILE.csv

With a feature spec: its events table of the split, joined to its users and items tables as
training joined them, encoded by the model's contract (the manifest's copy of the spec decides
every value; SPEC only says where the tables are, and must declare the model's features);
writes `request_id,user_id,item_id,pctr,pcvr,pctcvr`, one row per event in the table's order
(request_id empty where the spec names no request key). With an Ali-CCP folder: writes
`sample_id,pctr,pcvr,pctcvr` per impression in log order (every impression, conversions
without a click included). Both are the calibrated probabilities `/rank` returns for the same
features.
The user tower runs once per user, the item scorer in chunks of rows, as the service does: this
is the offline side of the offline/online consistency check.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("ranker.predict")
CHUNK = 8192


def predict(
    model_dir: Path, data: Path, split: str, items: Path | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sample ids, {pctr, pcvr, pctcvr}) of every impression of the split; a model trained
    with numeric item attributes reads them from `items`, joined as training joined them."""
    from service.engine import Engine
    from service.model_folder import newest_version
    from training import attributes
    from training.columnar import read_columnar as read_aliccp  # the same arrays, in columns

    engine = Engine(newest_version(model_dir))
    c = engine.contract
    table = None if items is None else attributes.read_item_table(items)
    s = read_aliccp(data, split, attributes.without_numeric(c), orphans="ignore")
    s = attributes.append(s, c, table)
    return np.asarray(s.sample_id), _score(engine, s)


def predict_spec(
    model_dir: Path, spec_path: Path, split: str, columns: tuple[str, ...] = ()
) -> tuple[dict, dict]:
    """({request_id, user_id, item_id: the events' values, and the events' `columns` as they
    are (pyarrow columns)}, {pctr, pcvr, pctcvr}) of every event of a spec's split, in the
    table's order."""
    import pyarrow.parquet as pq

    from features.spec import SpecError
    from service.engine import Engine
    from service.model_folder import newest_version
    from training import tables

    engine = Engine(newest_version(model_dir))
    c = engine.contract
    spec = _model_spec(c, spec_path)
    dtypes = tables.check_tables(spec)
    for f in c.fields:
        if f.dtype and dtypes.get(f.name) != f.dtype:
            raise SpecError(
                f"{spec.source}: features ({f.name}): its column holds {dtypes.get(f.name)} "
                f"values; the model was trained on {f.dtype} ones"
            )
    users = tables.read_side(spec, c, "user")
    items = tables.read_side(spec, c, "item")
    s = tables.read_split(spec, c, split, users, items, keep_all=True)
    probs = _score(engine, s)
    cols = [spec.keys["user"], spec.keys["item"]] + (
        [spec.keys["request"]] * bool(spec.keys["request"])
    )
    t = pq.read_table(
        spec.table_path("events", split), columns=list(dict.fromkeys([*cols, *columns]))
    )
    n = len(t)
    keys = {
        "request_id": t[spec.keys["request"]].to_pylist() if spec.keys["request"] else [""] * n,
        "user_id": t[spec.keys["user"]].to_pylist(),
        "item_id": t[spec.keys["item"]].to_pylist(),
        **{c: t[c] for c in columns},
    }
    return keys, probs


def _model_spec(contract, spec_path: Path):
    """The spec file, which must declare the model's features as the model's spec did."""
    from features import spec as S

    if contract.keys is None:
        raise S.SpecError(
            f"{spec_path}: the model reads Ali-CCP fields, not a spec's: give --data DIR"
        )
    spec = S.load(spec_path)
    mine = S.Spec.from_dict(contract.spec)

    def what(f):  # what a feature is, not where it is read from (its columns, raw or not)
        return dataclasses.replace(f, line=0, column="", weights="", raw="")

    theirs = {f.name: what(f) for f in spec.features}
    for f in mine.features:
        if theirs.get(f.name) != what(f):
            raise S.SpecError(
                f"{spec.source}: features ({f.name}): not declared as the model's spec declares "
                f"it ({f.to_dict()})"
            )
    if spec.keys != mine.keys:
        raise S.SpecError(
            f"{spec.source}: keys: {dict(spec.keys)}; the model's are {dict(mine.keys)}"
        )
    return spec


def _score(engine, s) -> dict[str, np.ndarray]:
    """The service's engine over a split's raw arrays: each user's tower once, the item scorer
    in chunks of rows."""
    c = engine.contract
    uid, uw = c.hash_side("user", np.asarray(s.user_ids), np.asarray(s.user_vals))
    reprs = np.concatenate(
        [engine.user_repr(uid[a : a + CHUNK], uw[a : a + CHUNK]) for a in range(0, len(uid), CHUNK)]
    )
    out: dict[str, list[np.ndarray]] = {"pctr": [], "pcvr": [], "pctcvr": []}
    for a in range(0, len(s), CHUNK):
        iid, iw = c.hash_side("item", s.item_ids[a : a + CHUNK], s.item_vals[a : a + CHUNK])
        rows = np.asarray(s.row_user[a : a + CHUNK])
        users, index = np.unique(rows, return_inverse=True)
        scores = engine.score(reprs[users], index.astype(np.int64), iid, iw)
        for k in out:
            out[k].append(getattr(scores, k))
    return {k: np.concatenate(v) for k, v in out.items()}


def write_spec_csv(path: Path, keys: dict, p: dict[str, np.ndarray]) -> None:
    """One row per event: its request, user and item ids as the table holds them (a text with
    a comma or quote quoted, as CSV does), its probabilities to 9 significant digits."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "user_id", "item_id", "pctr", "pcvr", "pctcvr"])
        probs = (p[k].tolist() for k in ("pctr", "pcvr", "pctcvr"))
        for r, u, i, a, b, c in zip(
            keys["request_id"], keys["user_id"], keys["item_id"], *probs, strict=True
        ):
            w.writerow([r, u, i, f"{a:.9g}", f"{b:.9g}", f"{c:.9g}"])


def write_csv(path: Path, sample_id: np.ndarray, p: dict[str, np.ndarray]) -> None:
    """Ids exactly (int64 beyond 2^53 too), probabilities to 9 significant digits."""
    with open(path, "w") as f:
        f.write("sample_id,pctr,pcvr,pctcvr\n")
        probs = (p[k].tolist() for k in ("pctr", "pcvr", "pctcvr"))
        rows = zip(sample_id.tolist(), *probs, strict=True)
        f.writelines(f"{s},{a:.9g},{b:.9g},{c:.9g}\n" for s, a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker predict", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a model version folder, or a folder whose newest version is used",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", type=Path, help="a feature spec: where its tables are")
    src.add_argument("--data", type=Path, help="a folder in the raw Ali-CCP layout")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.add_argument(
        "--items",
        type=Path,
        help="the item table a model trained with numeric attributes (ranker train --items) "
        "reads them from",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    from features.spec import SpecError

    if args.spec is not None and args.items is not None:
        p.error("--items goes with --data (a spec's items table is the spec's)")
    try:
        if args.spec is not None:
            keys, probs = predict_spec(args.model, args.spec, args.split)
            write_spec_csv(args.out, keys, probs)
        else:
            sample_id, probs = predict(args.model, args.data, args.split, args.items)
            write_csv(args.out, sample_id, probs)
    except (FileNotFoundError, SpecError) as e:
        p.error(str(e))
    log.info(
        "%d impressions scored into %s in %.1f s",
        len(probs["pctr"]),
        args.out,
        time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
