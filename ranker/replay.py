"""Replay a split's impressions through a running service as id-only requests and compare them
with the offline scores of `ranker predict`: the offline/online consistency check.

    ranker replay --spec SPEC --split test --predictions FILE.csv --url URL [--limit N]
    ranker replay --data DIR --split test --predictions FILE.csv --url URL [--limit N]

With a feature spec, each request of the events table (its request key, else each run of one
user's events) with one set of context values becomes one id-only request, as a recommender
sends it: the user id and the item ids as the tables hold them (integers or text) and the
context features by name; crosses are computed by the service from the stores' features.
`ranker predict --spec`'s CSV has one row per event in the table's order: the rows compared.

Each impression group (one common-features row and one scene) becomes one request: the user by
its id (field 101) without user_features, so the service reads the user store; the candidates
by item id (field 205), so it reads the item table; the scene (301) as context. A model that
uses the combination fields (508, 509, 702, 853: they depend on the user and the item, so no
store holds them) gets them inline on each candidate, as a caller would send them; a model
trained without them (`ranker train --without 508,509,702,853`) gets `item_ids` alone.

Prints, per head, the largest difference from the offline score and how many impressions differ
by more than `--tolerance`; exits 1 when any does. The stores must hold what the split holds
(`ranker items build` and `ranker users load` from the same folder): where a user's or an item's
features change within the files, the stores keep the newest and older impressions differ.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from features.contract import COMBINATION_FIELDS, FeatureContract

log = logging.getLogger("ranker.replay")
HEADS = ("pctr", "pcvr", "pctcvr")


def request_features(raw: dict) -> dict:
    """{feature: (raw ids, values)} (FeatureContract.decode_entity) -> a request's features, each
    as ids with their weights."""
    return {name: {"ids": ids, "weights": vals} for name, (ids, vals) in raw.items()}


def requests(
    data: Path,
    split: str,
    crosses: bool,
    limit: int | None,
    max_candidates: int,
    timeout_ms: int = 10_000,
) -> list[tuple[dict, list[int]]]:
    """(request body, the sample id of each candidate) per impression group, in log order."""
    from training.columnar import read_columnar as read_aliccp  # the same arrays, in columns

    c = FeatureContract.default()
    s = read_aliccp(data, split, c, orphans="ignore")
    cols = {f.name: cols.start for f, cols in c.columns("item")}
    user_col = {f.name: cols.start for f, cols in c.columns("user")}["101"]
    n = len(s) if limit is None else min(limit, len(s))
    groups: dict[tuple, list[int]] = defaultdict(list)
    for r in range(n):
        groups[(int(s.row_user[r]), int(s.item_ids[r, cols["301"]]))].append(r)
    out = []
    for (user, scene), rows in groups.items():
        uid = int(s.user_ids[user, user_col])
        for a in range(0, len(rows), max_candidates):
            part = rows[a : a + max_candidates]
            body: dict = {"user_id": uid, "timeout_ms": timeout_ms}
            if scene >= 0:
                body["context_features"] = {"301": scene}
            items = [int(s.item_ids[r, cols["205"]]) for r in part]
            if crosses:
                body["candidates"] = [
                    {
                        "item_id": i,
                        "features": request_features(
                            c.decode_entity(
                                "item",
                                s.item_ids[r],
                                s.item_vals[r],
                                lambda f: f.name in COMBINATION_FIELDS,
                            )
                        ),
                    }
                    for i, r in zip(items, part, strict=True)
                ]
            else:
                body["item_ids"] = items
            out.append((body, [int(s.sample_id[r]) for r in part]))
    return out


def spec_requests(
    spec_path: Path, split: str, limit: int | None, max_candidates: int, timeout_ms: int = 10_000
) -> list[tuple[dict, list[int]]]:
    """(id-only request body, the event row of each candidate) per request of a spec's events
    table and context values, in table order. A spec with event features sends each candidate
    as {item_id, features: its event values} (they belong to no store); a missing value (null,
    NaN, an empty text) is left out, as training reads it as missing."""
    import pyarrow.parquet as pq

    from features import spec as S

    spec = S.load(spec_path)
    context = [f for f in spec.features if f.side == "context"]
    event = [f for f in spec.features if f.side == "event"]
    cols = [
        spec.keys["request"],
        spec.keys["user"],
        spec.keys["item"],
        *(f.column for f in (*context, *event)),
    ]
    t = pq.read_table(
        spec.table_path("events", split), columns=list(dict.fromkeys(filter(None, cols)))
    )
    n = len(t) if limit is None else min(limit, len(t))
    t = t.slice(0, n)
    req = t[spec.keys["request"]].to_pylist() if spec.keys["request"] else [None] * n
    users, items = t[spec.keys["user"]].to_pylist(), t[spec.keys["item"]].to_pylist()
    ctx = [t[f.column].to_pylist() for f in context]
    per_event = [t[f.column].to_pylist() for f in event]
    groups: dict[tuple, list[int]] = defaultdict(list)
    run = 0
    for r in range(n):
        if req[r] is None and r and users[r] != users[r - 1]:
            run += 1  # no request key: a run of one user's events is one request
        key = (req[r] if req[r] is not None else run, users[r], *(c[r] for c in ctx))
        groups[key].append(r)
    out = []
    for key, rows in groups.items():
        values = key[2:]
        features = {f.name: v for f, v in zip(context, values, strict=True) if _given(v)}
        for a in range(0, len(rows), max_candidates):
            part = rows[a : a + max_candidates]
            body: dict = {"user_id": key[1]}
            if event:
                body["candidates"] = [
                    {
                        "item_id": items[r],
                        "features": {
                            f.name: col[r]
                            for f, col in zip(event, per_event, strict=True)
                            if _given(col[r])
                        },
                    }
                    for r in part
                ]
            else:
                body["item_ids"] = [items[r] for r in part]
            if features:
                body["context_features"] = features
            body["timeout_ms"] = timeout_ms
            out.append((body, part))
    return out


def _given(v) -> bool:
    """A value a request can carry: not null, NaN or an empty text (training's missing)."""
    return v is not None and v == v and v != "" and v != []


def read_predictions(path: Path) -> dict[int, tuple[float, float, float]]:
    """`ranker predict`'s CSV by sample id, or (a spec's: no sample_id) by row."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if "sample_id" not in (rows.fieldnames or ()):
            return {k: tuple(float(row[h]) for h in HEADS) for k, row in enumerate(rows)}
        return {int(row["sample_id"]): tuple(float(row[h]) for h in HEADS) for row in rows}


def replay(url: str, reqs: list[tuple[dict, list[int]]], timeout_s: float = 60.0) -> dict:
    """{sample id: (pctr, pcvr, pctcvr)} as the service scored them."""
    import httpx

    got: dict[int, tuple] = {}
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for body, sample_ids in reqs:
            r = client.post("/rank", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"/rank answered {r.status_code}: {r.text[:300]}")
            out = r.json()
            unknown = out.get("unknown_items")
            if unknown or out.get("user") != "store":
                raise RuntimeError(
                    f"user {body['user_id']}: the stores lack it (user: {out.get('user')}, "
                    f"unknown items: {unknown[:5]}): load both from the same folder"
                )
            by_item = {it["item_id"]: tuple(it[h] for h in HEADS) for it in out["items"]}
            keys = body.get("item_ids") or [c["item_id"] for c in body["candidates"]]
            for item, sid in zip(keys, sample_ids, strict=True):
                got[sid] = by_item[item]
    return got


def compare(online: dict, offline: dict, tolerance: float) -> dict:
    sids = sorted(online)
    missing = [s for s in sids if s not in offline]
    if missing:
        raise ValueError(f"{len(missing)} replayed impressions are not in the predictions")
    a = np.array([online[s] for s in sids])
    b = np.array([offline[s] for s in sids])
    diff = np.abs(a - b)
    return {
        "impressions": len(sids),
        "tolerance": tolerance,
        **{
            f"max_diff_{h}": float(diff[:, k].max()) if len(sids) else 0.0
            for k, h in enumerate(HEADS)
        },
        "over_tolerance": int((diff > tolerance).any(axis=1).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker replay", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", type=Path, help="a feature spec: where its events table is")
    src.add_argument("--data", type=Path, help="a folder in the raw Ali-CCP layout")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--predictions", type=Path, required=True, help="`ranker predict`'s CSV")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    p.add_argument("--limit", type=int, help="the first N impressions of the split only")
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--max-candidates", type=int, default=500, help="candidates per request")
    p.add_argument(
        "--timeout-ms",
        type=int,
        default=10_000,
        help="each request's deadline (a check, not a race)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import httpx

    if args.spec is not None:
        from features.spec import SpecError

        try:
            reqs = spec_requests(
                args.spec, args.split, args.limit, args.max_candidates, args.timeout_ms
            )
        except (SpecError, FileNotFoundError) as e:
            p.error(str(e))
        log.info("%d id-only requests (crosses computed by the service)", len(reqs))
    else:
        model = httpx.get(f"{args.url}/v1/model", timeout=10).json()
        crosses = not set(COMBINATION_FIELDS) <= set(model["features"]["left_out"])
        reqs = requests(
            args.data, args.split, crosses, args.limit, args.max_candidates, args.timeout_ms
        )
        log.info("%d requests (combination fields inline: %s)", len(reqs), crosses)
    report = compare(replay(args.url, reqs), read_predictions(args.predictions), args.tolerance)
    print(json.dumps(report, indent=2))
    return 1 if report["over_tolerance"] else 0


if __name__ == "__main__":
    sys.exit(main())
