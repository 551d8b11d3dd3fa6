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
