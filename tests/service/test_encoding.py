"""service/encoding.py with an item table: ranking by ids equals ranking by features (1e-5), on
the session's real model and a table built from the same generated logs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import entity, request_for

from features.contract import COMBINATION_FIELDS, CONTEXT_FIELDS
from features.items import ItemTable
from service.config import Settings
from service.main import create_app

OUTPUTS = ("pctr", "pcvr", "pctcvr")


@pytest.fixture(scope="module")
def table_file(generated, tmp_path_factory):
    from ranker import items

    out = tmp_path_factory.mktemp("items") / "items.npz"
    assert items.main(["build", "--data", str(generated), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def client(exported, table_file):
    app = create_app(Settings(model_dir=exported, item_table=table_file, max_candidates=2000))
    with TestClient(app) as c:
        yield c


def item_id(contract, ids_row) -> int:
    cols = dict(contract.columns("item"))
    return int(ids_row[cols[contract.field("205")]][0])


def per_item(answer: dict) -> dict:
    return {it["item_id"]: it for it in answer["items"]}


def close(a: dict, b: dict) -> bool:
    return all(abs(a[k] - b[k]) < 1e-5 for k in OUTPUTS)


def test_by_id_with_inline_cross_features_equals_by_features(client, samples):
    contract, s = samples
    user = int(s["row_user"][0])
    full, rows = request_for(contract, s, user, fusion={"c": 0.0})
    mixed = {**full, "candidates": []}
    for c, r in zip(full["candidates"], rows, strict=True):
        per_impression = {
            k: v for k, v in c["features"].items() if k in COMBINATION_FIELDS + CONTEXT_FIELDS
        }
        mixed["candidates"].append(
            {"item_id": item_id(contract, s["item_ids"][r]), "features": per_impression}
        )
    a = client.post("/rank", json=full).json()
    b = client.post("/rank", json=mixed).json()
    assert b["unknown_items"] == []
    by_row = {int(r): item_id(contract, s["item_ids"][r]) for r in rows}
    got = per_item(b)
    for row, it in per_item(a).items():
        assert close(it, got[by_row[row]]), (it, got[by_row[row]])


def test_item_ids_alone_equal_the_items_own_features(client, samples):
    """`item_ids` (and the request's context) scores what a full request without the
    per-impression combination fields scores."""
    contract, s = samples
    user = int(s["row_user"][0])
    full, rows = request_for(contract, s, user, fusion={"c": 0.0})
    for c in full["candidates"]:
        for k in COMBINATION_FIELDS + CONTEXT_FIELDS:
            c["features"].pop(k, None)
    ids = [item_id(contract, s["item_ids"][r]) for r in rows]
    by_ids = {k: v for k, v in full.items() if k != "candidates"} | {"item_ids": ids}
    a, b = per_item(client.post("/rank", json=full).json()), client.post("/rank", json=by_ids)
    assert b.status_code == 200, b.text
    got = per_item(b.json())
    for r, i in zip(rows, ids, strict=True):
        assert close(a[int(r)], got[i])


def test_an_inline_field_overrides_the_stored_one(client, samples):
    contract, s = samples
    r = 0
    iid = item_id(contract, s["item_ids"][r])
    user = entity(
        contract, "user", s["user_ids"][s["row_user"][r]], s["user_vals"][s["row_user"][r]]
    )
    base = {"user_id": "override", "user_features": user, "fusion": {"c": 0.0}}
    stored = client.post("/rank", json={**base, "item_ids": [iid]}).json()["items"][0]
    other = {"item_id": iid, "features": {"206": 123456789}}
    moved = client.post("/rank", json={**base, "candidates": [other]}).json()["items"][0]
    assert not close(stored, moved)  # the category given inline was used


def test_unknown_items_are_scored_by_id_reported_and_counted(client, samples):
    contract, s = samples
    r = 0
    user = entity(
        contract, "user", s["user_ids"][s["row_user"][r]], s["user_vals"][s["row_user"][r]]
    )
    known = item_id(contract, s["item_ids"][r])
    body = {"user_id": "cold", "user_features": user, "item_ids": [known, 987654321987]}
    out = client.post("/rank", json=body).json()
    assert out["unknown_items"] == [987654321987] and len(out["items"]) == 2
    text = client.get("/metrics").text
    assert any(
        x.startswith("ranker_unknown_items_total") and float(x.split()[-1]) >= 1
        for x in text.splitlines()
    )
    bare = {"user_id": "cold", "user_features": user, "candidates": [{"item_id": "sku-x"}]}
    r = client.post("/rank", json=bare)
    assert r.status_code == 422 and r.json()["error"]["field"] == "candidates[0].features"


def test_a_price_comes_from_the_request_or_the_table_or_the_request_is_refused(
    client, samples, exported, generated, tmp_path
):
    contract, s = samples
    user = entity(contract, "user", s["user_ids"][0], s["user_vals"][0])
    iid = item_id(contract, s["item_ids"][np.flatnonzero(s["row_user"] == 0)[0]])
    body = {"user_id": "p", "user_features": user, "item_ids": [iid], "fusion": {"c": 1.0}}
    r = client.post("/rank", json=body)  # Ali-CCP tables have no prices
    assert r.status_code == 422 and r.json()["error"]["field"] == "item_ids[0]"
    t = ItemTable.load(client.app.state.settings.item_table)
    priced = ItemTable(t.item_id, t.ids, t.vals, np.full(len(t), 7.0), t.max_len, "priced")
    priced.save(tmp_path / "priced.npz")
    settings = Settings(model_dir=exported, item_table=tmp_path / "priced.npz")
    with TestClient(create_app(settings)) as c:
        out = c.post("/rank", json=body).json()
        it = out["items"][0]
        assert abs(it["score"] - it["pctr"] * it["pcvr"] * 7.0) < 1e-9


def test_ranking_by_ids_without_a_table_is_refused(exported):
    with TestClient(create_app(Settings(model_dir=exported))) as c:
        r = c.post("/rank", json={"user_id": 1, "user_features": {"101": 1}, "item_ids": [5]})
    assert r.status_code == 422 and "RANKER_ITEM_TABLE" in r.json()["error"]["message"]


def test_a_damaged_table_stops_the_start_naming_it(exported, tmp_path):
    from service.model_folder import ModelError

    (tmp_path / "items.npz").write_bytes(b"not a table")
    with (
        pytest.raises(ModelError, match="item table items.npz"),
        TestClient(create_app(Settings(model_dir=exported, item_table=tmp_path / "items.npz"))),
    ):
        pass


def test_a_new_table_is_swapped_in_by_a_reload_and_a_broken_one_refused(
    exported, table_file, samples, tmp_path
):
    """The table belongs to a served version: replacing its file and reloading (or letting the
    watcher notice) serves the new one; a broken file is refused and the old one keeps serving."""
    import os

    import httpx
    from support import AUTH, TOKEN, serving

    contract, s = samples
    user = entity(contract, "user", s["user_ids"][0], s["user_vals"][0])
    iid = item_id(contract, s["item_ids"][np.flatnonzero(s["row_user"] == 0)[0]])
    body = {"user_id": "swap", "user_features": user, "item_ids": [iid], "fusion": {"c": 1.0}}
    t = ItemTable.load(table_file)
    live = tmp_path / "items.npz"

    def install(price: float) -> None:
        ItemTable(t.item_id, t.ids, t.vals, np.full(len(t), price), t.max_len).save(
            tmp_path / "next.npz"
        )
        os.replace(tmp_path / "next.npz", live)

    def price_served(url) -> float:
        it = httpx.post(f"{url}/rank", json=body).json()["items"][0]
        return it["score"] / (it["pctr"] * it["pcvr"])

    install(3.0)
    settings = dict(model_dir=exported, item_table=live, admin_token=TOKEN, reload_poll_s=0.2)
    with serving(**settings) as (url, _):
        assert abs(price_served(url) - 3.0) < 1e-6
        install(5.0)
        r = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
        # "unchanged" when the watcher (every 0.2 s) took the new file in first
        assert r.json()["status"] in ("reloaded", "unchanged")
        assert abs(price_served(url) - 5.0) < 1e-6
        install(8.0)  # the watcher notices the new file by itself
        deadline = time.monotonic() + 30
        while abs(price_served(url) - 8.0) > 1e-6:
            assert time.monotonic() < deadline, "the watcher did not pick the new table up"
            time.sleep(0.1)
        (tmp_path / "bad.npz").write_bytes(b"broken")
        os.replace(tmp_path / "bad.npz", live)
        r = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
        assert r.status_code == 409 and "item table items.npz" in r.json()["error"]["message"]
        assert abs(price_served(url) - 8.0) < 1e-6  # the old table keeps serving


def test_a_negative_id_of_an_ali_ccp_field_is_refused_naming_it(client, samples):
    """(a spec's integer ids lose their sign bit, as training's do; Ali-CCP's ids are >= 0)"""
    contract, s = samples
    body, _ = request_for(contract, s, 0)
    body["candidates"][1]["features"]["210"] = [5, -1]
    r = client.post("/rank", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "candidates[1].features.210[1]" and "[0, 2^63)" in err["message"]


def test_every_4xx_names_the_field_the_caller_wrote_and_its_rule(exported, samples, table_file):
    """Over HTTP (issue 23, classes 5 and 6): a negative id in item_ids is item_ids[i] (not a
    candidate's features the request does not have); a bad attribute is named under its own
    name with the bound it broke; an item field in context_features applies to every
    candidate, overriding the table's, where with item_ids it was silently dropped."""
    import httpx
    from support import serving

    contract, s = samples
    cols = dict(contract.columns("item"))
    ids = [int(s["item_ids"][r, cols[contract.field("205")]][0]) for r in range(3)]
    with serving(model_dir=exported, item_table=table_file) as (url, _):

        def refused(body: dict) -> dict:
            r = httpx.post(f"{url}/rank", json={"user_id": 1, "user_features": {"101": 1}, **body})
            assert r.status_code == 422, r.text
            return r.json()["error"]

        e = refused({"item_ids": [ids[0], -5, ids[1]]})
        assert e["field"] == "item_ids[1]" and "[0, 2^63)" in e["message"]
        attrs = {"rating": 2.0, "sales": 1e30, "stock": 3.0}
        e = refused({"candidates": [{"item_id": ids[0], "attributes": attrs}]})
        assert e["field"] == "candidates[0].attributes.sales", e
        assert "1e+18" in e["message"] or "1000000000000000000" in e["message"], e
        base = {"user_id": 1, "user_features": {"101": 1}}

        def scores(body: dict) -> dict:
            r = httpx.post(f"{url}/rank", json={**base, **body})
            assert r.status_code == 200, r.text
            return {it["item_id"]: it["pctcvr"] for it in r.json()["items"]}

        context = scores({"item_ids": ids, "context_features": {"206": 5}})
        inline = scores({"candidates": [{"item_id": i, "features": {"206": 5}} for i in ids]})
        assert context == inline != scores({"item_ids": ids})
