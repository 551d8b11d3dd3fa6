"""Join click and conversion events to the impression log, into training tables that
`ranker train --spec` reads: the features as the service served them, the labels as users gave
them.

    ranker join --log DIR --events FILE --out DIR [--click-window 1h] [--conversion-window 7d]
                [--as-of TIME] [--test-fraction 0.1] [--model-version NAME/VERSION]

The log (RANKER_LOG_DIR: its complete `*.parquet` files) holds one row per returned item of each
logged answer, with the user's and the item's features as served, by the model's spec names
(service/impressions.py). The events (Parquet or CSV) hold one row per outcome: `request_id`,
`item_id`, `kind` (click or conversion) and `time` (a timestamp, ISO-8601 text or UNIX
seconds). An impression is (request_id, item_id); an item shown twice in one list takes its
events at its first position.

The windows. A click counts when it comes within --click-window of the impression (default 1
hour: a click answers the list a user saw, within the visit); a conversion when it comes within
--conversion-window of that click (default 7 days: the usual post-click attribution window in
e-commerce; a shorter one turns late buyers into negatives, a longer one delays every label by
as much). Events outside their window, before their impression, for an impression the log does
not hold, or a conversion with no click counted before it (the funnel) are counted, not used;
an outcome reported twice counts once.

Maturity. An impression's labels are final once both windows have passed:
time + click window + conversion window <= as-of (--as-of; default the newest event's time,
where the events export ends). Only matured impressions are written, each with
`labels_final_at`; the others are counted (a later join, with later events, takes them): taking
clicked impressions early while their unclicked neighbours wait, or the reverse, would bias the
rates.

The tables. `events_train.parquet` and `events_test.parquet` (the newest --test-fraction of the
requests by time: the test split is later than the training split, as serving is) and
`spec.yaml`: the served model's spec with its user and item features read from each event's
logged columns (`raw`: the ids as served, hashed already) and no side tables; `join.json`
reports the counts. A log row whose user's features were not logged (`user_logged` false: a
cache hit's stored record changed before the log read it again) is left out, counted.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("ranker.join")
KINDS = ("click", "conversion")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class JoinError(ValueError):
    """A log or an events file that cannot be joined; the message names the file and column."""


def duration(text: str) -> float:
    """'90s', '30m', '1h', '7d' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90s, 30m, 1h, 7d)")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


# ---- the log ----------------------------------------------------------------------------------
def read_log(folder: Path, model_version: str | None = None):
    """The log's complete files as one table (its rows of `model_version` only, when given), and
    the model's feature layout its files name (`ranker.features`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise JoinError(f"{folder}: no complete impression log file (*.parquet)")
    tables, layouts = [], {}
    for path in files:
        t = pq.read_table(path)
        meta = (t.schema.metadata or {}).get(b"ranker.features")
        if meta is None:
            raise JoinError(
                f"{path}: its rows have no features as served (a log written before they were "
                "logged, or not the impression log)"
            )
        if model_version is not None:
            t = t.filter(pa.compute.equal(t["model_version"].cast(pa.string()), model_version))
        if len(t):
            versions = set(t["model_version"].cast(pa.string()).unique().to_pylist())
            layouts.setdefault(meta, set()).update(versions)
            tables.append(_plain(t.replace_schema_metadata(None)))
    if not tables:
        raise JoinError(f"{folder}: no logged answer of model {model_version}")
    if len(layouts) > 1:
        seen = "; ".join(", ".join(sorted(v)) for v in layouts.values())
        raise JoinError(
            f"{folder}: the log holds models of different features ({seen}): "
            "join one at a time (--model-version)"
        )
    layout = json.loads(next(iter(layouts)))
    if not layout.get("spec"):
        raise JoinError(
            f"{folder}: the logged model reads Ali-CCP fields, not a spec's: the join writes a "
            "spec's tables"
        )
    return pa.concat_tables(tables, promote_options="default"), layout


def _plain(t):
    """Dictionary-encoded text as plain text (joins and sorts take it)."""
    import pyarrow as pa

    for k, f in enumerate(t.schema):
        if pa.types.is_dictionary(f.type):
            t = t.set_column(k, f.name, t.column(k).cast(f.type.value_type))
    return t


# ---- the events -------------------------------------------------------------------------------
def read_events(path: Path, item_type):
    """request_id (text), item_id (as the log's), kind and time (µs since the epoch, int64)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise JoinError(f"{path}: no such events file")
    if path.suffix.lower() == ".csv":
        t = pcsv.read_csv(
            path,
            convert_options=pcsv.ConvertOptions(
                column_types={"request_id": pa.string(), "item_id": item_type, "kind": pa.string()}
            ),
        )
    else:
        t = pq.read_table(path)
    t = _plain(t)
    for col in ("request_id", "item_id", "kind", "time"):
        if col not in t.column_names:
            raise JoinError(f"{path}: no column {col!r} (request_id, item_id, kind, time)")
    try:
        item = t["item_id"].cast(item_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise JoinError(
            f"{path}: column 'item_id' is {t.schema.field('item_id').type}; the log's item ids "
            f"are {item_type}"
        ) from None
    kind = t["kind"].cast(pa.string())
    bad = pc.invert(pc.fill_null(pc.is_in(kind, pa.array(KINDS)), False))
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(np.asarray(bad))[0])
        raise JoinError(f"{path}: row {row}: kind {kind[row].as_py()!r} is not click or conversion")
    for col in ("request_id", "item_id", "time"):
        if t[col].null_count:
            row = int(np.flatnonzero(np.asarray(t[col].is_null()))[0])
            raise JoinError(f"{path}: row {row}: {col} is missing")
    return pa.table(
        {
            "request_id": t["request_id"].cast(pa.string()),
            "item_id": item,
            "kind": kind,
            "t": pa.array(_micros(t["time"], f"{path}: column 'time'")),
        }
    )


def _micros(column, what: str) -> np.ndarray:
    """A time column -> µs since the epoch: a timestamp (naive: UTC), ISO-8601 text (with its
    zone, else UTC), or numbers of UNIX seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    try:
        if pa.types.is_timestamp(t):
            return np.asarray(column.cast(pa.timestamp("us", t.tz)).cast(pa.int64()))
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            try:
                parsed = pc.cast(column, pa.timestamp("us", "UTC"))
            except pa.ArrowInvalid:  # no zone given: UTC
                parsed = pc.cast(column, pa.timestamp("us"))
            return np.asarray(parsed.cast(pa.int64()))
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return np.round(np.asarray(column.cast(pa.float64())) * 1e6).astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise JoinError(f"{what} is not a time ({e})") from None
    raise JoinError(f"{what} is {t}: a timestamp, ISO-8601 text or UNIX seconds")


# ---- the join ---------------------------------------------------------------------------------
def attribute(impressions, events, click_us: int, conversion_us: int) -> tuple:
    """Each impression's (request_id, item_id, t0) first click time and first conversion time
    within their windows (null: none), and the counts of events not used."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = ["request_id", "item_id"]
    ev = events.join(impressions.select([*keys, "t0"]), keys, join_type="left outer")
    known = pc.is_valid(ev["t0"])
    counts = {"events": len(events), "unknown_impression": int(len(ev) - pc.sum(known).as_py())}
    ev = ev.filter(known)
    after = np.asarray(ev["t"]) - np.asarray(ev["t0"])
    kind = np.asarray(ev["kind"].to_numpy(zero_copy_only=False))
    clicks = kind == "click"
    counts["click_before_impression"] = int((clicks & (after < 0)).sum())
    counts["click_late"] = int((clicks & (after > click_us)).sum())
    ok = clicks & (after >= 0) & (after <= click_us)
    first_click = _first(ev.filter(pa.array(ok)), keys, "click_t")
    counts["click_duplicate"] = int(ok.sum()) - len(first_click)
    conv = ev.filter(pa.array(kind == "conversion")).join(first_click, keys, join_type="left outer")
    since = np.asarray(conv["t"]) - np.asarray(pc.fill_null(conv["click_t"], 0))
    clicked = np.asarray(pc.is_valid(conv["click_t"]))
    counts["conversion_without_click"] = int((~clicked).sum())
    counts["conversion_before_click"] = int((clicked & (since < 0)).sum())
    counts["conversion_late"] = int((clicked & (since > conversion_us)).sum())
    ok = clicked & (since >= 0) & (since <= conversion_us)
    first_conv = _first(conv.filter(pa.array(ok)), keys, "conversion_t")
    counts["conversion_duplicate"] = int(ok.sum()) - len(first_conv)
    return first_click, first_conv, counts


def _first(events, keys: list[str], name: str):
    """The earliest event time per key, as column `name`."""
    first = events.group_by(keys).aggregate([("t", "min")])
    return first.rename_columns([name if c == "t_min" else c for c in first.column_names])


def join(
    log_dir: Path,
    events_path: Path,
    out: Path,
    click_s: float = 3600.0,
    conversion_s: float = 7 * 86400.0,
    as_of: str | None = None,
    test_fraction: float = 0.1,
    model_version: str | None = None,
) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows, layout = read_log(log_dir, model_version)
    report: dict = {"log_rows": len(rows)}
    rows = rows.append_column("t0", rows["time"].cast(pa.int64()))
    # a row logged twice (the same answer in two files) counts once
    rows = _dedupe(rows)
    report["log_rows_duplicate"] = report["log_rows"] - len(rows)
    keys = ["request_id", "item_id"]
    first = rows.group_by(keys).aggregate([("position", "min"), ("t0", "min")])
    first = first.rename_columns([c.removesuffix("_min") for c in first.column_names])
    events = read_events(events_path, rows.schema.field("item_id").type)
    clicks, convs, counts = attribute(first, events, int(click_s * 1e6), int(conversion_s * 1e6))
    report.update(counts)
    labels = first.join(clicks, keys, join_type="left outer").join(
        convs, keys, join_type="left outer"
    )
    # (joined by row number: Arrow's join carries no list column, and the features are lists)
    at = ["request_id", "item_id", "position"]
    slim = rows.select(at).append_column("row", pa.array(np.arange(len(rows))))
    found = slim.join(labels.select([*at, "click_t", "conversion_t"]), at, join_type="inner")
    for name in ("click_t", "conversion_t"):
        valid = np.asarray(pc.is_valid(found[name]))
        has = np.zeros(len(rows), bool)
        has[np.asarray(found["row"])[valid]] = True
        rows = rows.append_column(name, pa.array(has))
    # (another position of an item shown twice keeps no label: its first position has them)
    horizon = (
        int(np.max(np.asarray(events["t"]))) if len(events) else int(pc.max(rows["t0"]).as_py())
    )
    if as_of is not None:
        horizon = int(_micros(pa.chunked_array([[as_of]]), f"--as-of {as_of!r}")[0])
    final_at = np.asarray(rows["t0"]) + int((click_s + conversion_s) * 1e6)
    mature = final_at <= horizon
    logged = np.asarray(rows["user_logged"].fill_null(False))
    report["immature"] = int((~mature).sum())
    report["without_user_features"] = int((mature & ~logged).sum())
    keep = mature & logged
    rows = rows.append_column(
        "labels_final_at", pa.array(final_at, pa.int64()).cast(pa.timestamp("us", "UTC"))
    )
    rows = rows.filter(pa.array(keep))
    click = rows["click_t"].cast(pa.int8())
    conversion = rows["conversion_t"].cast(pa.int8())
    rows = rows.drop_columns(["click_t", "conversion_t", "t0"])
    rows = rows.append_column("click", click).append_column("conversion", conversion)
    rows = rows.sort_by(
        [("time", "ascending"), ("request_id", "ascending"), ("position", "ascending")]
    )
    train, test = _split(rows, test_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(train, out / "events_train.parquet", compression="zstd")
    pq.write_table(test, out / "events_test.parquet", compression="zstd")
    (out / "spec.yaml").write_text(spec_text(layout, log_dir))
    report.update(
        {
            "as_of": _iso(horizon),
            "click_window_s": click_s,
            "conversion_window_s": conversion_s,
            "impressions": len(rows),
            "calibration": calibration(rows),
            "train": {"impressions": len(train), **_rates(train)},
            "test": {"impressions": len(test), **_rates(test)},
        }
    )
    (out / "join.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _dedupe(rows):
    import pyarrow as pa

    rid, pos = rows["request_id"].to_numpy(zero_copy_only=False), np.asarray(rows["position"])
    order = np.lexsort((pos, rid))
    rid, pos = rid[order], pos[order]
    new = np.ones(len(order), bool)
    new[1:] = (rid[1:] != rid[:-1]) | (pos[1:] != pos[:-1])
    return rows.take(pa.array(np.sort(order[new])))


def _split(rows, test_fraction: float):
    """The requests by time: the newest `test_fraction` of them the test split."""
    import pyarrow as pa

    if not len(rows):
        return rows, rows
    firsts = rows.group_by("request_id").aggregate([("time", "min")])
    times = np.asarray(firsts["time_min"].cast(pa.int64()))
    cut = (
        np.sort(times)[int(np.floor(len(times) * (1 - test_fraction)))]
        if test_fraction > 0
        else None
    )
    if cut is None:
        return rows, rows.slice(0, 0)
    test_ids = firsts.filter(pa.array(times >= cut))["request_id"]
    is_test = pa.compute.is_in(rows["request_id"], test_ids)
    return rows.filter(pa.compute.invert(is_test)), rows.filter(is_test)


def _rates(t) -> dict:
    if not len(t):
        return {"requests": 0, "ctr": None, "cvr": None}
    click = np.asarray(t["click"]).astype(float)
    conv = np.asarray(t["conversion"]).astype(float)
    return {
        "requests": len(set(t["request_id"].to_pylist())),
        "ctr": round(float(click.mean()), 6),
        "cvr": round(float(conv.sum() / click.sum()), 6) if click.sum() else None,
    }


def calibration(rows, bins: int = 10) -> dict:
    """Per model version and arm, per head, on the matured impressions: the predictions' sum
    and the outcomes' (ctr: every impression's pCTR against its click; ctcvr: its pCTCVR against
    its conversion; cvr: a clicked impression's pCVR against its conversion), their ratio
    (predicted over observed: 1 is calibrated) and the binned calibration error (the sum over
    tenths of the prediction of |predicted - observed|, over the predictions): what
    /feedback's metrics give Prometheus online, from the offline labels."""
    import pyarrow as pa

    if not len(rows):
        return {}
    version = rows["model_version"].cast(pa.string()).to_numpy(zero_copy_only=False)
    arm = rows["arm"].cast(pa.string()).fill_null("none").to_numpy(zero_copy_only=False)
    click = np.asarray(rows["click"]).astype(np.float64)
    conv = np.asarray(rows["conversion"]).astype(np.float64)
    p = {h: np.asarray(rows[h]).astype(np.float64) for h in ("pctr", "pcvr", "pctcvr")}
    out: dict = {}
    for v, a in sorted(set(zip(version.tolist(), arm.tolist(), strict=True))):
        mine = (version == v) & (arm == a)
        heads = {}
        for head, pred, label, on in (
            ("ctr", p["pctr"], click, mine),
            ("cvr", p["pcvr"], conv, mine & (click == 1)),
            ("ctcvr", p["pctcvr"], conv, mine),
        ):
            pr, lb = pred[on], label[on]
            which = np.minimum((pr * bins).astype(np.int64), bins - 1)
            err = np.abs(
                np.bincount(which, pr, minlength=bins) - np.bincount(which, lb, minlength=bins)
            ).sum()
            heads[head] = {
                "impressions": int(on.sum()),
                "predicted": round(float(pr.sum()), 3),
                "observed": int(lb.sum()),
                "ratio": round(float(pr.sum() / lb.sum()), 4) if lb.sum() else None,
                "binned_error": round(float(err / pr.sum()), 4) if pr.sum() else None,
            }
        out.setdefault(v, {})[a] = heads
    return out


def _iso(us: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat()


# ---- the spec ---------------------------------------------------------------------------------
def spec_dict(layout: dict) -> dict:
    """The served model's spec, read from the joined events: each user, item, context and event
    feature from its logged column (raw ids where it takes ids), a key feature from its key
    column; crosses as they were; no side tables, no price."""
    spec = layout["spec"]
    logged = {f["name"]: f for f in layout["features"]}
    key_cols = {"user": "user_id", "item": "item_id"}
    key_feature = {
        side: (layout.get("keys") or {}).get(side, {}).get("field", "") for side in key_cols
    }
    features = []
    for f in spec["features"]:
        f = dict(f)
        if f["side"] != "cross":
            mine = logged[f["name"]]
            if f["side"] in key_cols and f["name"] == key_feature[f["side"]]:
                f["column"] = key_cols[f["side"]]  # as training read it: from the key
                f.pop("raw", None)
            else:
                f["column"] = mine["column"]
                f.pop("weights", None)
                if mine.get("weights"):
                    f["weights"] = mine["weights"]
                if f["kind"] != "numeric":
                    f["raw"] = mine.get("values", "int")
        first = ("name", "side", "kind", "column")
        features.append({**{k: f[k] for k in first if k in f}, **f})
    return {
        "keys": {"user": "user_id", "item": "item_id", "request": "request_id"},
        "labels": {"click": "click", "conversion": "conversion"},
        "tables": {"events": {"train": "events_train.parquet", "test": "events_test.parquet"}},
        "features": features,
    }


def spec_text(layout: dict, log_dir: Path) -> str:
    import yaml

    head = (
        f"# Written by `ranker join` from the impression log in {log_dir}: the served model's\n"
        "# features as it served them (raw ids, per event), the labels from the joined events.\n"
    )
    return head + yaml.safe_dump(spec_dict(layout), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ranker join",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--log", type=Path, required=True, help="RANKER_LOG_DIR's folder")
    ap.add_argument(
        "--events", type=Path, required=True, help="clicks and conversions (.parquet or .csv)"
    )
    ap.add_argument("--out", type=Path, required=True, help="the training tables' folder")
    ap.add_argument(
        "--click-window", type=duration, default=3600.0, help="after the impression (1h)"
    )
    ap.add_argument(
        "--conversion-window", type=duration, default=7 * 86400.0, help="after the click (7d)"
    )
    ap.add_argument("--as-of", help="when the events end (ISO-8601; default: the newest event)")
    ap.add_argument(
        "--test-fraction", type=float, default=0.1, help="newest requests to test (0.1)"
    )
    ap.add_argument("--model-version", help="join this NAME/VERSION's answers only")
    args = ap.parse_args(argv)
    if not 0 <= args.test_fraction < 1:
        ap.error("--test-fraction is in [0, 1)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = join(
            args.log,
            args.events,
            args.out,
            args.click_window,
            args.conversion_window,
            args.as_of,
            args.test_fraction,
            args.model_version,
        )
    except JoinError as e:
        print(f"ranker join: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
