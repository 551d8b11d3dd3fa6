"""POST /rank end to end on the session's really exported model, in-process and over real
HTTP: scores equal the export's, caching, fusion, bad input, readiness (main.py, routes.py)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import request_for, serving

from service.config import Settings
from service.main import create_app


def test_scores_equal_the_exported_model_hit_or_miss(client, samples):
    contract, s = samples
    user = int(s["row_user"][-1])
    body, rows = request_for(contract, s, user, fusion={"c": 0.0})
    first = client.post("/rank", json=body).json()
    second = client.post("/rank", json=body).json()
    assert first["user_cache"] == "miss" and second["user_cache"] == "hit"
    assert first["model_version"] == "esmm/v1"
    for out in (first, second):
        got = {it["item_id"]: it for it in out["items"]}
        assert sorted(got) == rows.tolist()
        for r in rows:
            for k in ("pctr", "pcvr", "pctcvr"):
                assert abs(got[int(r)][k] - s[k][r]) < 1e-5
        scores = [it["score"] for it in out["items"]]
        assert scores == sorted(scores, reverse=True)
        assert out["fusion"] == {"policy": "product", "a": 1.0, "b": 1.0, "c": 0.0}


def test_a_cache_hit_skips_the_user_tower(client, samples):
    contract, s = samples
    engine = client.app.state.slot.current.engine
    calls = []
    real = engine.user_repr
    engine.user_repr = lambda *a: calls.append(1) or real(*a)
    try:
        body, _ = request_for(contract, s, int(s["row_user"][0]))
        body["user_id"] = "skip-test"
        client.post("/rank", json=body)
        client.post("/rank", json=body)
        body["user_features"]["101"] = 424242  # changed features: a new digest, a new vector
        assert client.post("/rank", json=body).json()["user_cache"] == "miss"
    finally:
        engine.user_repr = real
    assert len(calls) == 2


def test_fusion_top_k_and_price(client, samples):
    contract, s = samples
    body, rows = request_for(
        contract,
        s,
        int(s["row_user"][0]),
        fusion={"policy": "product", "a": 1.0, "b": 0.5, "c": 1.0},
        top_k=3,
    )
    out = client.post("/rank", json=body).json()
    assert len(out["items"]) == min(3, len(rows))
    it = out["items"][0]
    price = 1.0 + it["item_id"] % 7
    assert it["score"] == pytest.approx(it["pctr"] * it["pcvr"] ** 0.5 * price, rel=1e-6)
    body["fusion"] = {"policy": "sum", "a": 1.0, "b": 2.0, "c": 0.0}
    it = client.post("/rank", json=body).json()["items"][0]
    assert it["score"] == pytest.approx(it["pctr"] + 2 * it["pcvr"], rel=1e-6)


BAD = [
    (lambda b: b.update(user_features={"999": 1}), 422, "user_features.999"),
    (lambda b: b.update(user_features={"205": 1}), 422, "item field"),
    (lambda b: b["candidates"][0].update(price=False), 422, "price"),
    (lambda b: b["candidates"][0].update(price=float("inf")), 422, None),
    (lambda b: b["candidates"][0].update(price=-1.0), 422, "price"),
    (lambda b: b["candidates"][0]["features"].update({"205": -5}), 422, "205"),
    (lambda b: b["candidates"][0]["features"].update({"205": 2**64}), 422, "205"),
    (lambda b: b["candidates"][0]["features"].update({"205": [1, 2]}), 422, "one id"),
    (
        lambda b: b["candidates"][0]["features"].update({"210": {"ids": [1, 2], "weights": [1.0]}}),
        422,
        "weights",
    ),
    (lambda b: b["candidates"][0]["features"].update({"205": "7"}), 422, "205"),
    (lambda b: b.update(candidates=[]), 422, "candidates"),
    (lambda b: b.update(candidates=b["candidates"] * 700), 422, "at most 600"),
    (lambda b: b.update(fusion={"a": 99.0}), 422, "fusion.a"),
    (lambda b: b.update(fusion={"c": 1.0}) or b["candidates"][0].pop("price"), 422, "price"),
    (lambda b: b.update(top_k=0), 422, "top_k"),
    (lambda b: b.update(extra_field=1), 422, "extra_field"),
    (lambda b: b.pop("user_id"), 422, "user_id"),
]


@pytest.mark.parametrize("mutate, status, needle", BAD)
def test_bad_input_gets_a_clear_4xx(client, samples, mutate, status, needle):
    contract, s = samples
    body, _ = request_for(contract, s, int(s["row_user"][0]))
    mutate(body)
    content = json.dumps(body).replace("Infinity", "1e999").encode()
    r = client.post("/rank", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if needle:
        assert needle in err["message"] + str(err.get("field")), err


def test_malformed_json_and_oversized_bodies(client, exported):
    r = client.post("/rank", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "malformed_json"
    app = create_app(Settings(model_dir=exported, max_body_bytes=2048))
    with TestClient(app) as small:
        r = small.post("/rank", content=b" " * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_readiness_false_until_warm_and_model_endpoint(exported):
    app = create_app(Settings(model_dir=exported))
    cold = TestClient(app)
    assert cold.get("/readyz").status_code == 503  # lifespan not run: nothing loaded
    assert cold.get("/healthz").status_code == 200
    with TestClient(app) as warm:
        assert warm.get("/readyz").json()["model_version"] == "esmm/v1"
        m = warm.get("/v1/model").json()
        assert m["providers"][-1] == "CPUExecutionProvider"
        assert [f["field"] for f in m["features"]["user"]][0] == "101"
        doc = warm.get("/openapi.json").json()
        assert "RankRequest" in doc["components"]["schemas"]
        assert {"413", "422", "503", "504"} <= set(doc["paths"]["/rank"]["post"]["responses"])


@pytest.fixture(scope="module")
def server(exported):
    with serving(model_dir=exported) as (url, app):
        yield url, app


def test_concurrent_requests_share_one_run_over_http(server, samples):
    url, app = server
    contract, s = samples
    model = app.state.slot.current
    gate = threading.Event()
    users = sorted(set(s["row_user"].tolist()))[:6]
    bodies = [request_for(contract, s, u)[0] for u in users]
    for b in bodies:  # cache the users first: the busy thread below also runs the user tower
        assert httpx.post(f"{url}/rank", json=b, timeout=30).json()["user_cache"] == "miss"
    model.executor.submit(gate.wait, 10)  # keep the scorer thread busy meanwhile
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(httpx.post, f"{url}/rank", json=b, timeout=30) for b in bodies]
        deadline = time.time() + 10
        # One job is taken into the blocked run; all the others must be waiting in the queue.
        sizes = [len(b["candidates"]) for b in bodies]
        while model.batcher.pending_rows < sum(sizes) - max(sizes):
            assert time.time() < deadline, "requests never queued"
            time.sleep(0.01)
        waiting = httpx.get(f"{url}/metrics").text  # every /rank is in flight, and this scrape
        gate.set()
        answers = [f.result() for f in futures]
    assert all(a.status_code == 200 for a in answers)
    assert f'ranker_requests_in_flight{{path="/rank"}} {float(len(bodies))}' in waiting
    assert 'ranker_requests_in_flight{path="/metrics"} 1.0' in waiting
    for user, answer in zip(users, answers, strict=True):  # batched scores equal alone scores
        for it in answer.json()["items"]:
            assert abs(it["pctcvr"] - s["pctcvr"][it["item_id"]]) < 1e-5
            assert s["row_user"][it["item_id"]] == user
    text = httpx.get(f"{url}/metrics").text
    assert 'ranker_requests_in_flight{path="/rank"} 0.0' in text  # answered: back to none
    jobs = [line for line in text.splitlines() if line.startswith("ranker_batch_jobs_bucket")]
    le1 = next(float(line.split()[-1]) for line in jobs if 'le="1.0"' in line)
    total = next(float(line.split()[-1]) for line in jobs if 'le="+Inf"' in line)
    assert total - le1 >= 1  # at least one run held rows of several requests


def test_a_request_over_the_batch_size_is_split_and_still_exact(exported, samples):
    contract, s = samples
    user = int(np.bincount(s["row_user"]).argmax())  # the user with the most rows
    body, rows = request_for(contract, s, user)
    assert len(rows) > 7
    with TestClient(create_app(Settings(model_dir=exported, max_batch_rows=3))) as c:
        out = c.post("/rank", json=body).json()
        text = c.get("/metrics").text
    got = {it["item_id"]: it["pctr"] for it in out["items"]}
    assert all(abs(got[int(r)] - s["pctr"][r]) < 1e-5 for r in rows)
    runs = next(
        float(x.split()[-1]) for x in text.splitlines() if x.startswith("ranker_scorer_runs_total")
    )
    over = [x for x in text.splitlines() if x.startswith("ranker_batch_rows_bucket")]
    assert runs >= -(-len(rows) // 3)
    le10 = next(float(x.split()[-1]) for x in over if 'le="10.0"' in x)
    assert le10 == runs  # every run fits the 10-row bucket (3 rows at most)


def test_context_features_apply_to_every_candidate_and_candidates_override_them(client, samples):
    contract, s = samples
    body, _ = request_for(contract, s, int(s["row_user"][0]))
    for c in body["candidates"]:
        c["features"].pop("301", None)
        c["features"].pop("210", None)
    body["fusion"] = {"c": 0.0}
    per_candidate = json.loads(json.dumps(body))
    for c in per_candidate["candidates"]:
        c["features"]["301"] = 3
        c["features"]["210"] = [11, 12]
    with_context = {**body, "context_features": {"301": 3, "210": [11, 12]}}
    overridden = json.loads(json.dumps(with_context))
    overridden["context_features"] = {"301": 9, "210": [5, 6, 7]}
    for c in overridden["candidates"]:
        c["features"]["301"] = 3
        c["features"]["210"] = [11, 12]

    def scores(b):
        return {it["item_id"]: it["pctcvr"] for it in client.post("/rank", json=b).json()["items"]}

    expected = scores(per_candidate)
    assert scores(with_context) == expected
    assert scores(overridden) == expected
    assert scores(body) != expected  # the context really changes the scores
