"""/rank by a spec's feature names (a shop's own tables, tests/support.py): an id-only request,
its user from the embedded store or Redis and its items from the item table, scores exactly as
the same impressions sent with every feature by name, crosses computed online; a wrong value is
a 4xx naming the feature."""

from __future__ import annotations

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from support import serving

from loadtest.parts import RedisServer
from ranker import items, users
from service.config import Settings
from service.main import create_app

HEADS = ("pctr", "pcvr", "pctcvr")


@pytest.fixture(scope="module")
def stores(shop_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("shop-stores")
    spec = str(shop_spec)
    assert items.main(["build", "--spec", spec, "--out", str(out / "items.npz")]) == 0
    assert users.main(["build", "--spec", spec, "--out", str(out / "users.npz")]) == 0
    return out / "items.npz", out / "users.npz"


@pytest.fixture(scope="module")
def shop(shop_spec):
    """The shop's test events grouped by page view, and its members and skus by key."""
    folder = shop_spec.parent
    events = pq.read_table(folder / "ev_test.parquet").to_pylist()
    members = {r["member"]: r for r in pq.read_table(folder / "members.parquet").to_pylist()}
    skus = {r["sku"]: r for r in pq.read_table(folder / "skus.parquet").to_pylist()}
    views: dict[str, list[dict]] = {}
    for e in events:
        views.setdefault(e["page_view"], []).append(e)
    return list(views.values()), members, skus


def by_ids(view: list[dict]) -> dict:
    return {
        "user_id": view[0]["member"],
        "item_ids": [e["sku"] for e in view],
        "context_features": {"device": view[0]["device"], "hour": view[0]["hour"]},
    }


def by_features(view: list[dict], members: dict, skus: dict) -> dict:
    """The same impressions with every feature by name, as a caller without stores sends them."""
    m = members[view[0]["member"]]
    user = {"member": m["member"]}
    if m["tier"] is not None:
        user["tier"] = m["tier"]
    if m["age"] is not None and m["age"] == m["age"]:
        user["age"] = m["age"]
    if m["viewed_brands"]:
        user["viewed_brands"] = {"ids": m["viewed_brands"], "weights": m["viewed_brands_n"]}
    candidates = []
    for e in view:
        s = skus[e["sku"]]
        feats = {"sku": s["sku"], "brand": s["brand"], "rating": s["rating"]}
        if s["tags"]:
            feats["tags"] = s["tags"]
        candidates.append({"item_id": e["sku"], "features": feats, "price": s["list_price"]})
    return {
        "user_id": m["member"],
        "user_features": user,
        "candidates": candidates,
        "context_features": {"device": view[0]["device"], "hour": view[0]["hour"]},
    }


def scores(answer: dict) -> dict:
    assert "items" in answer, answer
    return {it["item_id"]: tuple(it[h] for h in HEADS) for it in answer["items"]}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = max(abs(x - y) for k in a for x, y in zip(a[k], b[k], strict=True))
    assert diff <= 1e-6, diff


def with_crosses(views, members, skus) -> list[list[dict]]:
    """Views where some candidate's brand is in the member's list: a cross that is not 0."""
    out = []
    for v in views:
        listed = set(members[v[0]["member"]]["viewed_brands"])
        if any(skus[e["sku"]]["brand"] in listed for e in v):
            out.append(v)
    return out


def test_by_ids_from_the_embedded_store_scores_as_by_features(shop_model, stores, shop):
    views, members, skus = shop
    crossed = with_crosses(views, members, skus)[:6]
    assert len(crossed) == 6
    table, store = stores
    app = create_app(Settings(model_dir=shop_model.parent, item_table=table, user_store=str(store)))
    with TestClient(app) as c:
        for view in crossed + views[:4]:
            a = c.post("/rank", json=by_ids(view)).json()
            assert a["user"] == "store" and not a.get("unknown_items"), a
            full = c.post("/rank", json=by_features(view, members, skus)).json()
            assert_same(scores(a), scores(full))
            # again: the user part (with its lists) from the cache, the crosses unchanged
            again = c.post("/rank", json=by_ids(view)).json()
            assert again["user_cache"] == "hit" and scores(again) == scores(a)
        model = c.get("/v1/model").json()["features"]
        assert model["keys"]["user"] == {"dtype": "text", "field": "member"}
        assert {f["name"]: f["source"] for f in model["features"]}["brand_affinity"] == "cross"
        assert model["spec"]["price"] == "list_price"


def test_by_ids_from_redis_over_http_scores_as_by_features(shop_model, shop_spec, stores, shop):
    """The store in a real Redis (`ranker users load --spec`), the user part cached in Redis
    too: a second service, its process cache empty, reads the part (lists included) from the
    Redis tier and scores the same."""
    views, members, skus = shop
    crossed = with_crosses(views, members, skus)[:4]
    table, _ = stores
    with RedisServer() as redis:
        url = f"redis://127.0.0.1:{redis.port}/0"
        assert users.main(["load", "--spec", str(shop_spec), "--redis", url]) == 0
        settings = dict(
            model_dir=shop_model.parent,
            item_table=table,
            user_store=url,
            user_store_timeout_ms=2000,
            redis_url=url,
            redis_timeout_ms=2000,
        )
        first = {}
        with serving(**settings) as (base, _):
            for k, view in enumerate(crossed):
                a = httpx.post(f"{base}/rank", json=by_ids(view)).json()
                assert a["user"] == "store", a
                full = httpx.post(f"{base}/rank", json=by_features(view, members, skus)).json()
                assert_same(scores(a), scores(full))
                first[k] = scores(a)
        with serving(**settings) as (base, app):
            for k, view in enumerate(crossed):
                b = httpx.post(f"{base}/rank", json=by_ids(view)).json()
                assert b["user_cache"] == "hit" and scores(b) == first[k]
            text = httpx.get(f"{base}/metrics").text
            assert 'ranker_user_cache_total{outcome="hit",tier="redis"}' in text


BAD = [
    ({"user_features": {"brand_affinity": 1.0}}, "user_features.brand_affinity", "it is a cross"),
    ({"context_features": {"brand": "brand-1"}}, "context_features.brand", "not a context one"),
    ({"context_features": {"device": 3}}, "context_features.device", "takes text ids"),
    ({"context_features": {"hour": "noon"}}, "context_features.hour", "numeric"),
    ({"context_features": {"weather": "rain"}}, "context_features.weather", "known item features"),
    ({"user_features": {"tier": 1.5}}, "user_features.tier", "takes ids, not a number"),
    ({"user_features": {"viewed_brands": ["a", 7]}}, "user_features.viewed_brands[1]", "text ids"),
    ({"item_ids": [7]}, "item_ids[0]", "item ids are texts"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD)
def test_a_wrong_value_is_refused_naming_the_feature(
    shop_model, stores, shop, change, field, message
):
    views, members, skus = shop
    body = by_ids(views[0])
    for key, value in change.items():
        if isinstance(value, dict) and key in body:
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    table, store = stores
    app = create_app(Settings(model_dir=shop_model.parent, item_table=table, user_store=str(store)))
    with TestClient(app) as c:
        r = c.post("/rank", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and message in err["message"], err


def test_an_unknown_item_with_inline_features_keeps_its_key_and_negative_ids_are_ids(
    shop_model, stores, shop
):
    """A candidate the item table lacks, sent with some features, is scored with its key
    feature as training reads it from every event: as if it had given the key itself. A spec's
    negative integer id is an id (its sign bit cleared, as in training), not a refusal."""
    views, members, skus = shop
    table, store = stores
    app = create_app(Settings(model_dir=shop_model.parent, item_table=table, user_store=str(store)))
    body = by_ids(views[0])
    del body["item_ids"]
    feats = {"brand": "brand-3", "rating": 4.0, "tags": [-7, 2]}
    body["candidates"] = [
        {"item_id": "sku-new", "features": feats},
        {"item_id": "sku-new", "features": {**feats, "sku": "sku-new"}},
    ]
    with TestClient(app) as c:
        r = c.post("/rank", json=body)
        assert r.status_code == 200, r.text
        got = [it["pctr"] for it in r.json()["items"]]
        assert got[0] == got[1]
        body["candidates"][0]["attributes"] = {"rating": 4.0}
        bad = c.post("/rank", json=body)
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "candidates[0].attributes"


def test_a_numeric_id_for_a_text_user_key_is_refused(shop_model, stores):
    table, store = stores
    app = create_app(Settings(model_dir=shop_model.parent, item_table=table, user_store=str(store)))
    with TestClient(app) as c:
        r = c.post("/rank", json={"user_id": 5, "item_ids": ["sku-1"]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "user_id"
        unknown = c.post("/rank", json={"user_id": "m-nobody", "item_ids": ["sku-1", "sku-x"]})
        body = unknown.json()
        assert body["user"] == "unknown" and body["unknown_items"] == ["sku-x"]
        assert all(np.isfinite(it["pctr"]) for it in body["items"])
