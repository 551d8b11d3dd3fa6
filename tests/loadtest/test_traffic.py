"""The load test's traffic is realistic and valid (locust itself is never imported here)."""

import json

import numpy as np

from loadtest.traffic import Traffic
from service import fusion, request

RULES = request.Rules(1000, fusion.FusionParams("product", 1, 1, 0), -4, 4, 1000)


def test_requests_are_valid_and_shaped_like_production():
    t = Traffic(seed=3, users=2000)
    reqs = [t.request() for _ in range(300)]
    for r in reqs[:50]:
        request.decode(json.dumps(r).encode(), RULES)  # the service accepts every one
    sizes = np.array([len(r["candidates"]) for r in reqs])
    assert sizes.min() >= 50 and sizes.max() <= 1000 and 200 <= np.median(sizes) <= 400
    users = [r["user_id"] for r in reqs]
    top = max(set(users), key=users.count)
    assert users.count(top) >= 20  # Zipf: a few users come back often (cache hits)
    assert len(set(users)) >= 100  # and a long tail (misses)
    again = [r for r in reqs if r["user_id"] == top]
    assert all(r["user_features"] == again[0]["user_features"] for r in again)
    behaviour = sum(
        len(again[0]["user_features"][f]["ids"]) for f in ("109_14", "110_14", "127_14", "150_14")
    )
    assert behaviour >= 100  # hundreds of behaviour ids, as the generator's users
    share = np.mean([r.get("fusion") is not None for r in reqs])
    assert 0.1 < share < 0.3


def test_by_names_the_traffic_is_what_the_default_spec_model_reads(spec_model, tmp_path):
    """Traffic(names=True) speaks the generated spec's names (what `make run`'s model reads);
    its id-only form finds every item in its own item table (the table draws its own intents,
    so the two forms are not the same impressions)."""
    from fastapi.testclient import TestClient

    from loadtest.traffic import by_ids
    from service.config import Settings
    from service.main import create_app

    t = Traffic(seed=5, users=50, items=300, names=True)
    body = t.request(candidates=40)
    assert "recent_categories" in body["user_features"] and "109_14" not in body["user_features"]
    assert isinstance(body["user_features"]["gender"], str)
    assert isinstance(body["context_features"]["scene"], str)
    t.item_table().save(tmp_path / "items.npz")
    settings = Settings(model_dir=spec_model, item_table=tmp_path / "items.npz")
    with TestClient(create_app(settings)) as c:
        full = c.post("/rank", json=body)
        ids = c.post("/rank", json=by_ids(body))
    assert full.status_code == 200 and ids.status_code == 200, (full.text, ids.text)
    assert ids.json()["unknown_items"] == [] and len(ids.json()["items"]) == 40
