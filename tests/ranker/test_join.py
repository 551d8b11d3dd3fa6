"""The loop closed end to end (ranker/join.py): a real service process logs what it serves over
HTTP (by ids from the stores, cache hits and misses, users and candidates sent inline, an item
the table lacks), synthetic outcomes are joined to the log with planted edge cases, the joined
tables replay through the served model to the scores it answered (the features in the log are
the ones it used), and `ranker train --spec` trains on them a model that serves."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from features.contract import FeatureContract
from loadtest.parts import ServiceProcess
from ranker import items, join, users
from ranker.predict import predict_spec
from service.config import Settings
from service.main import create_app
from training import export, train

HOUR = 3600.0


@pytest.fixture(scope="module")
def logged(spec_generated, spec_model, tmp_path_factory):
    """(log folder, stores, the answers): a real process serving the generator's spec model by
    ids, every answer logged, stopped by SIGTERM."""
    tmp = tmp_path_factory.mktemp("loop")
    table, store, logs = tmp / "items.npz", tmp / "users.npz", tmp / "logs"
    assert items.main(["build", "--spec", str(spec_generated), "--out", str(table)]) == 0
    assert users.main(["build", "--spec", str(spec_generated), "--out", str(store)]) == 0
    tables = spec_generated.parent
    user_ids = pq.read_table(tables / "users.parquet")["user_id"].to_pylist()[:12]
    item_ids = pq.read_table(tables / "items.parquet")["item_id"].to_pylist()
    rng = np.random.default_rng(5)
    bodies = []
    for k in range(48):
        some = [int(i) for i in rng.choice(item_ids, 30, replace=False)]
        body = {
            "user_id": int(user_ids[k % len(user_ids)]),  # each user again: cache hits
            "item_ids": some + [999_999_999],  # an item the table lacks: its id alone
            "context_features": {"scene": ["home", "search"][k % 2]},
        }
        if k % 8 == 3:  # the user's features sent, candidates overriding the table
            body = {
                "user_id": body["user_id"],
                "user_features": {
                    "gender": "F",
                    "recent_categories": {"ids": [4, 9], "weights": [2, 1]},
                },
                "candidates": [
                    {"item_id": i, "features": {"category": 7}} if j % 3 == 0 else {"item_id": i}
                    for j, i in enumerate(some)
                ],
                "context_features": {"scene": "home"},
            }
        bodies.append(body)
    svc = ServiceProcess(
        tmp / "service.log",
        model_dir=spec_model,
        item_table=table,
        user_store=store,
        log_dir=logs,
        access_log=False,
    ).wait_ready()
    try:
        answers = [httpx.post(f"{svc.url}/rank", json=b, timeout=30).json() for b in bodies]
    finally:
        assert svc.stop() == 0
    assert not list(logs.glob(".*"))  # closed whole on SIGTERM
    return logs, table, store, bodies, answers


def _events(logs, rng) -> tuple[pa.Table, dict]:
    """Outcomes drawn from the served rates, and planted ones the join must not count."""
    rows = pa.concat_tables([pq.read_table(f) for f in sorted(logs.glob("*.parquet"))])
    rid, item = rows["request_id"].to_pylist(), rows["item_id"].to_pylist()
    t0 = [t.timestamp() for t in rows["time"].to_pylist()]
    pctr, pcvr = rows["pctr"].to_numpy(), rows["pcvr"].to_numpy()
    ev = []
    planted = {0: "clicked twice, converted", 1: "late click", 2: "click before it"}
    for k in range(len(rows)):
        if k == 0:
            ev += [(rid[k], item[k], "click", t0[k] + 5), (rid[k], item[k], "click", t0[k] + 6)]
            ev.append((rid[k], item[k], "conversion", t0[k] + 2 * 86400))
        elif k == 1:
            ev += [(rid[k], item[k], "click", t0[k] + HOUR + 10)]
            ev += [(rid[k], item[k], "conversion", t0[k] + HOUR + 20)]  # no counted click
        elif k == 2:
            ev += [(rid[k], item[k], "click", t0[k] - 10)]
        elif rng.random() < 4 * pctr[k]:
            ev.append((rid[k], item[k], "click", t0[k] + rng.uniform(1, 600)))
            if rng.random() < 4 * pcvr[k]:
                ev.append((rid[k], item[k], "conversion", t0[k] + rng.uniform(700, 86400)))
    ev.append(("no-such-request", item[0], "click", t0[0] + 1))
    times = [dt.datetime.fromtimestamp(t, dt.UTC) for _, _, _, t in ev]
    table = pa.table(
        {
            "request_id": [e[0] for e in ev],
            "item_id": [e[1] for e in ev],
            "kind": [e[2] for e in ev],
            "time": pa.array(times, pa.timestamp("ms", "UTC")),
        }
    )
    return table, {"rows": rows, "planted": planted}


def test_the_log_joins_replays_as_served_and_trains(logged, spec_model, tmp_path):
    logs, table, store, bodies, answers = logged
    events, what = _events(logs, np.random.default_rng(1))
    pq.write_table(events, tmp_path / "events.parquet")
    rows = what["rows"]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=8)).isoformat()
    out = tmp_path / "joined"
    args = ["--log", str(logs), "--events", str(tmp_path / "events.parquet"), "--out", str(out)]
    assert join.main([*args, "--as-of", later]) == 0
    report = json.loads((out / "join.json").read_text())
    # every answer logged, each returned item a row; the planted events counted, not used
    assert report["log_rows"] == sum(len(a["items"]) for a in answers) == len(rows)
    assert (report["unknown_impression"], report["click_duplicate"]) == (1, 1)
    assert (report["click_late"], report["click_before_impression"]) == (1, 1)
    assert report["conversion_without_click"] == 1 and report["conversion_late"] == 0
    assert report["immature"] == 0 and report["without_user_features"] == 0
    # clicks were drawn at 4x the served pCTR: the join's calibration says the model predicts
    # a quarter of what happened (one version, no arms)
    (version,) = report["calibration"]
    ctr = report["calibration"][version]["none"]["ctr"]
    assert ctr["impressions"] == len(rows) and 0.18 < ctr["ratio"] < 0.35, ctr
    joined = pa.concat_tables(
        [pq.read_table(out / f"events_{s}.parquet") for s in ("train", "test")]
    )
    assert len(joined) == len(rows)
    labels = {
        (r["request_id"], r["position"]): (r["click"], r["conversion"])
        for r in joined.select(["request_id", "position", "click", "conversion"]).to_pylist()
    }
    first = rows.slice(0, 3).to_pylist()
    assert [labels[(r["request_id"], r["position"])] for r in first] == [(1, 1), (0, 0), (0, 0)]
    clicks = events.filter(pa.compute.equal(events["kind"], "click"))
    assert sum(c for c, _ in labels.values()) == len(clicks) - 4  # 4 planted ones not counted
    # the test split is the newest requests
    train_t = pq.read_table(out / "events_train.parquet")["time"].to_numpy()
    test_t = pq.read_table(out / "events_test.parquet")["time"].to_numpy()
    assert len(test_t) and train_t.max() <= test_t.min()

    # replay: the served model on the joined tables scores what it answered
    for split in ("train", "test"):
        keys, probs = predict_spec(spec_model, out / "spec.yaml", split, ("pctr", "pcvr"))
        for head in ("pctr", "pcvr"):
            served = keys[head].to_numpy().astype(np.float64)
            assert np.abs(probs[head] - served).max() < 1e-5, (split, head)

    # the joined tables train a model that reads requests as the served one did, and serves
    run, model = tmp_path / "run", tmp_path / "models" / "esmm" / "v2"
    train.main(["--spec", str(out / "spec.yaml"), "--out", str(run), "--epochs", "1"])
    export.main(["--run", str(run), "--out", str(model)])
    new = json.loads((model / "manifest.json").read_text())["feature_contract"]
    old = json.loads((spec_model / "manifest.json").read_text())["feature_contract"]
    mine, theirs = FeatureContract.from_dict(new), FeatureContract.from_dict(old)
    assert [(f.name, f.dtype, f.max_len) for f in mine.fields] == [
        (f.name, f.dtype, f.max_len) for f in theirs.fields
    ]
    assert mine.keys == theirs.keys
    s = Settings(model_dir=model, item_table=table, user_store=str(store))
    with TestClient(create_app(s)) as c:
        r = c.post("/rank", json=bodies[0])  # by ids, the user from the store
        assert r.status_code == 200 and r.json()["user"] == "store", r.text

    # joined too early, nothing is final: every impression waits, none is written
    assert join.main([*args, "--as-of", rows["time"][0].as_py().isoformat()]) == 0
    report = json.loads((out / "join.json").read_text())
    assert report["immature"] == len(rows) and report["impressions"] == 0


def test_a_log_without_features_or_an_event_of_another_kind_is_refused(logged, tmp_path, capsys):
    logs = logged[0]
    old = tmp_path / "old"
    old.mkdir()
    pq.write_table(pa.table({"request_id": ["r"], "item_id": [1]}), old / "x.parquet")
    bad = tmp_path / "events.csv"
    bad.write_text("request_id,item_id,kind,time\nr,1,view,2026-12-05T00:00:00Z\n")
    assert join.main(["--log", str(old), "--events", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "no features as served" in capsys.readouterr().err
    assert join.main(["--log", str(logs), "--events", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "row 0: kind 'view' is not click or conversion" in capsys.readouterr().err
