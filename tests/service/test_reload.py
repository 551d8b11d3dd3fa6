"""service/reload.py: reloads under load (of models and of item tables), broken models and tables
refused, pinning, and what refusals show."""

from __future__ import annotations

import json
import os
import shutil
import time

import httpx
import numpy as np
from fastapi.testclient import TestClient
from support import AUTH, TOKEN, encoded, entity, reference, serving

from features.items import ItemTable
from loadtest.load import Load
from loadtest.parts import copy_version
from service.config import Settings
from service.main import create_app


def test_five_reloads_under_load_drop_nothing_and_every_answer_names_its_scorer(
    exported, second_model, bodies, tmp_path
):
    root = tmp_path / "models"
    copy_version(exported, root, "r0")
    settings = dict(model_dir=root, admin_token=TOKEN, reload_poll_s=0)
    ref_a, ref_b = reference(exported, bodies), reference(second_model, bodies)
    assert ref_a[0] != ref_b[0]  # the two models really score differently
    family = {f"esmm/r{k}": ref_b if k % 2 else ref_a for k in range(6)}
    with serving(**settings) as (url, app):
        assert httpx.post(f"{url}/admin/reload", headers=AUTH).json()["status"] == "unchanged"
        load = Load(url, encoded(bodies), concurrency=4)

        def check(i: int, out: dict) -> str | None:
            ref = family.get(out["model_version"])
            if ref is None:
                return f"unknown version {out['model_version']}"
            err = max(abs(it["pctcvr"] - ref[i][it["item_id"]]) for it in out["items"])
            return f"{out['model_version']} off by {err}" if err > 1e-5 else None

        load.check = check
        load.start()
        load.wait_for(20)
        for k in range(1, 6):
            copy_version(second_model if k % 2 else exported, root, f"r{k}")
            resp = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {
                "status": "reloaded",
                "model_version": f"esmm/r{k}",
                "pinned": None,
                "previous": f"esmm/r{k - 1}",
            }
            load.wait_for(20)
        r = load.stop()
        metrics = httpx.get(f"{url}/metrics").text
    assert r.failed == 0, r.summary()
    assert not r.problems, r.problems[:5]
    assert set(r.versions) >= {"esmm/r0", "esmm/r5"} and len(r.versions) >= 4, r.versions
    assert 'ranker_reloads_total{outcome="ok"} 5.0' in metrics
    assert 'ranker_model_info{version="esmm/r5"} 1.0' in metrics
    assert "esmm/r4" not in metrics.split("ranker_model_info")[-1]


def test_a_broken_model_is_refused_and_the_old_one_keeps_serving(
    exported, bodies, tmp_path, caplog
):
    root = tmp_path / "models"
    copy_version(exported, root, "a1")
    settings = dict(model_dir=root, admin_token=TOKEN, reload_poll_s=0.1)
    with serving(**settings) as (url, app):
        before = httpx.post(f"{url}/rank", json=bodies[0]).json()
        # graphs that cannot load
        bad = copy_version(exported, root, "a2")
        (bad / "item_scorer.onnx").write_bytes(b"not a graph")
        resp = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
        assert resp.status_code == 409 and "item_scorer.onnx" in resp.json()["error"]["message"]
        # stored sample scores that the graphs do not reproduce: the parity smoke test
        wrong = copy_version(exported, root, "a3")
        with np.load(wrong / "samples.npz") as z:
            s = dict(z)
        s["pctr"] = s["pctr"] + 0.01
        np.savez(wrong / "samples.npz", **s)
        resp = httpx.post(f"{url}/admin/reload", headers=AUTH, json={"path": "esmm/a3"}, timeout=60)
        assert resp.status_code == 409 and "sample rows differ" in resp.json()["error"]["message"]
        # a manifest that contradicts its graphs
        lying = copy_version(exported, root, "a4")
        m = json.loads((lying / "manifest.json").read_text())
        m["graphs"]["item_scorer"]["outputs"].reverse()
        (lying / "manifest.json").write_text(json.dumps(m))
        resp = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
        assert resp.status_code == 409 and "the manifest says" in resp.json()["error"]["message"]
        after = httpx.post(f"{url}/rank", json=bodies[0]).json()
        assert after["model_version"] == "esmm/a1" and after["items"] == before["items"]
        assert any("refused model" in rec.message for rec in caplog.records)
        # the watcher finds a good new version by itself (and skipped the refused ones)
        copy_version(exported, root, "a5")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz").json()["model_version"] != "esmm/a5":
            assert time.monotonic() < deadline, "the watcher never loaded the new version"
            time.sleep(0.1)
        assert httpx.post(f"{url}/rank", json=bodies[0]).json()["items"] == before["items"]
        shutil.rmtree(bad)


def test_a_rollback_sticks_until_the_newest_is_asked_for_again(exported, tmp_path):
    root = tmp_path / "models"
    copy_version(exported, root, "v1")
    copy_version(exported, root, "v2")
    with serving(model_dir=root, admin_token=TOKEN, reload_poll_s=0.1) as (url, _):
        assert httpx.get(f"{url}/readyz").json()["model_version"] == "esmm/v2"
        resp = httpx.post(f"{url}/admin/reload", headers=AUTH, json={"path": "esmm/v1"})
        assert resp.json()["pinned"] == "esmm/v1"
        copy_version(exported, root, "v3")  # a newer version appears while pinned
        time.sleep(1.0)  # ten polls of the watcher
        assert httpx.get(f"{url}/readyz").json()["model_version"] == "esmm/v1"
        assert httpx.get(f"{url}/v1/model").json()["pinned"] == "esmm/v1"
        resp = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)  # unpin: newest
        assert resp.json()["model_version"] == "esmm/v3" and resp.json()["pinned"] is None
        copy_version(exported, root, "v4")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz").json()["model_version"] != "esmm/v4":
            assert time.monotonic() < deadline, "the watcher no longer follows after unpinning"
            time.sleep(0.1)


def test_reload_refusals_name_no_server_path(exported, tmp_path):
    root = tmp_path / "models"
    copy_version(exported, root, "v1")
    broken = copy_version(exported, root, "v0")
    (broken / "item_scorer.onnx").write_bytes(b"not a graph")
    with TestClient(create_app(Settings(model_dir=root, admin_token=TOKEN))) as c:
        # a folder that holds a broken model, or none, is refused as a model (409); a path that
        # names no folder is the request's error (422), as the OpenAPI document says
        cases = (("esmm/v0", 409), ("esmm", 409), ("esmm/missing", 422), ("esmm/v1\x00x", 422))
        for path, status in cases:
            r = c.post("/admin/reload", headers=AUTH, json={"path": path})
            assert r.status_code == status and str(tmp_path) not in r.text, (path, r.text)


def test_table_swaps_under_load_drop_nothing_and_no_answer_mixes_two_tables(
    exported, samples, tmp_path
):
    """Id-only requests from 4 clients while the item table file is replaced twice (new features
    and prices) and reloaded, then replaced by a broken file: every answer is a 200 scored whole
    by one table, never a table before its reload began, and after a reload returned each client
    gets the new table from its next request on; the broken table is refused with its reason and
    the last good one keeps serving."""
    contract, s = samples
    col_205 = dict(contract.columns("item"))[contract.field("205")].start
    base = ItemTable.from_rows(contract, s["item_ids"], s["item_vals"])
    changed = base.ids.copy()
    c206 = base.columns()["206"]
    changed[:, c206] = np.where(changed[:, c206] >= 0, changed[:, c206] + 1, -1)  # other pctr
    tables = [  # A, B, C: the features and prices each swap brings
        ItemTable(base.item_id, base.ids, base.vals, np.full(len(base), 3.0), base.max_len),
        ItemTable(base.item_id, changed, base.vals, np.full(len(base), 5.0), base.max_len),
        ItemTable(base.item_id, base.ids, base.vals, np.full(len(base), 8.0), base.max_len),
    ]
    users = np.unique(s["row_user"])[:8]  # 8 bodies, 4 clients: client w sends bodies w, w + 4
    bodies = []
    for u in users:
        rows = np.flatnonzero(s["row_user"] == u)
        bodies.append(
            {
                "user_id": f"table-{u}",
                "user_features": entity(contract, "user", s["user_ids"][u], s["user_vals"][u]),
                "item_ids": sorted({int(s["item_ids"][r][col_205]) for r in rows}),
                "fusion": {"c": 1.0},  # the table's price is in every score
            }
        )
    live = tmp_path / "items.npz"

    def install(table) -> None:
        table.save(tmp_path / "next.npz")  # written whole, then renamed over the live file
        os.replace(tmp_path / "next.npz", live)

    refs = []  # per table: per body, item id -> (pctr, pcvr, score)
    for k, table in enumerate(tables):
        table.save(tmp_path / f"ref{k}.npz")
        with TestClient(
            create_app(Settings(model_dir=exported, item_table=tmp_path / f"ref{k}.npz"))
        ) as c:
            answers = [c.post("/rank", json=b).json()["items"] for b in bodies]
        refs.append([{it["item_id"]: it for it in a} for a in answers])

    def matches(out: list[dict], ref: dict) -> bool:
        return all(
            all(abs(it[x] - ref[it["item_id"]][x]) < 1e-5 for x in ("pctr", "pcvr", "score"))
            for it in out
        )

    for b in range(len(bodies)):  # every body tells the three tables apart
        for k in range(3):
            assert [matches(list(refs[k][b].values()), ref[b]) for ref in refs].count(True) == 1

    def which(i: int, out: dict) -> int | None:
        return next((k for k, ref in enumerate(refs) if matches(out["items"], ref[i])), None)

    phase = {"started": 0, "done": 0}  # reloads asked for / answered
    events: list[tuple[int, int, int, int]] = []  # (client, started, done, table)

    def check(i: int, out: dict) -> str | None:
        k = which(i, out)
        if k is None:
            return f"body {i}: scored by no single table: {out['items'][:2]}"
        events.append((i % 4, phase["started"], phase["done"], k))
        return None

    install(tables[0])
    settings = dict(model_dir=exported, item_table=live, admin_token=TOKEN, reload_poll_s=0)
    with serving(**settings) as (url, _):
        load = Load(url, encoded(bodies), concurrency=4, check=check)
        load.start()
        load.wait_for(40)
        for k in (1, 2):
            install(tables[k])
            phase["started"] = k
            resp = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
            phase["done"] = k
            assert resp.status_code == 200 and resp.json()["status"] == "reloaded", resp.text
            load.wait_for(40)
        (tmp_path / "bad.npz").write_bytes(b"not a table")
        os.replace(tmp_path / "bad.npz", live)
        resp = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
        load.wait_for(40)
        r = load.stop()
        metrics = httpx.get(f"{url}/metrics").text
    assert resp.status_code == 409, resp.text
    message = resp.json()["error"]["message"]
    assert "item table items.npz" in message and "unreadable item table" in message, message
    assert r.failed == 0 and r.statuses[200] == r.total, r.summary()
    assert not r.problems, r.problems[:5]
    assert all(k <= started for _, started, _, k in events)  # never a table before its reload
    for w in range(4):
        seen = [(done, k) for client, _, done, k in events if client == w]
        tables_seen = [k for _, k in seen]
        assert tables_seen == sorted(tables_seen), f"client {w} went back to an older table"
        for k in (1, 2):  # after reload k answered, at most the request in flight is older
            assert sum(1 for done, t in seen if done >= k and t < k) <= 1, (w, seen)
        assert tables_seen[-1] == 2  # the broken table changed nothing
    assert {k for *_, k in events} == {0, 1, 2}
    assert 'ranker_reloads_total{outcome="ok"} 2.0' in metrics
    assert 'ranker_reloads_total{outcome="refused"} 1.0' in metrics


def test_a_replaced_version_is_freed_with_its_table(exported, tmp_path):
    """Nothing keeps a retired version alive once its requests are done: not the start-up, not
    its batcher. (Each kept version held its whole item table: 200 bytes an item.)"""
    import gc
    import weakref

    root = tmp_path / "models"
    copy_version(exported, root, "v1")
    app = create_app(Settings(model_dir=root, admin_token=TOKEN, reload_poll_s=0))
    with TestClient(app) as c:
        first = weakref.ref(app.state.slot.current)
        copy_version(exported, root, "v2")
        assert c.post("/admin/reload", headers=AUTH).json()["model_version"] == "esmm/v2"
        deadline = time.monotonic() + 10
        while first() is not None:
            assert time.monotonic() < deadline, (
                f"esmm/v1 is still referenced: {gc.get_referrers(first())}"
            )
            gc.collect()
            time.sleep(0.05)
