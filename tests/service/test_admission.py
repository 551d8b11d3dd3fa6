"""service/admission.py: admission as a unit, and its refusals over HTTP on the real model."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from support import encoded, request_for, serving

from loadtest.load import Load
from service.admission import Admission, Refused
from service.config import Settings
from service.main import create_app


def test_admission_bounds_rows_and_sheds_what_cannot_meet_its_deadline():
    rate, now = [None], [0.0]
    a = Admission(1000, lambda: rate[0], clock=lambda: now[0])
    a.admit(600, timeout_s=1.0)
    with pytest.raises(Refused) as e:
        a.admit(500, timeout_s=1.0)
    assert e.value.reason == "queue_full" and e.value.retry_after_s == 1
    a.admit(400, timeout_s=1.0)  # exactly at the bound
    a.release(1000)
    rate[0] = 100.0  # rows per second: 600 queued rows take 6 s
    a.admit(600, timeout_s=10.0)
    with pytest.raises(Refused) as e:
        a.admit(10, timeout_s=1.0)
    assert e.value.reason == "deadline" and e.value.retry_after_s == 6
    assert a.rows == 600 and a.refused == {"queue_full": 1, "deadline": 1, "draining": 0}
    a.draining = True
    assert a.full()
    with pytest.raises(Refused, match="shutting down"):
        a.admit(1, timeout_s=60.0)


def test_admission_measures_rows_per_second_of_busy_time_end_to_end():
    now = [0.0]
    a = Admission(1000, lambda: 1e6, clock=lambda: now[0])
    assert a.rows_per_s == 1e6  # the model's rate stands in until a busy second is seen
    a.admit(300, timeout_s=10.0)
    now[0] = 0.5
    a.release(300)
    now[0] = 10.0  # idle: not counted
    a.admit(300, timeout_s=10.0)
    now[0] = 10.5
    a.release(300)
    assert a.measured_rows_per_s == 600.0 and a.rows_per_s == 600.0
    a.admit(600, timeout_s=10.0)  # under continuous load the window still closes
    for t in (11.0, 11.5):
        now[0] = t
        a.release(100)
        a.admit(100, timeout_s=10.0)
    assert a.measured_rows_per_s == pytest.approx(0.7 * 600 + 0.3 * 200 / 1.0)


def test_only_a_full_bound_refuses_before_the_body_is_read():
    """Before its body is read nothing is known of a request but its size, and a size says
    nothing reliable of its rows: only a bound already full refuses early."""
    a = Admission(1000)
    assert not a.full()
    a.admit(600, timeout_s=1.0)
    assert not a.full()
    a.admit(400, timeout_s=1.0)
    assert a.full()
    with pytest.raises(Refused, match="the bound is full"):
        a.refuse_now()


def test_an_idle_server_admits_any_valid_request():
    """Nothing queued: admitted, whatever the measured rate predicts for its own rows."""
    a = Admission(1000, lambda: 10.0)  # 10 rows a second: 900 rows would take 90 s
    a.admit(900, timeout_s=0.001)
    assert a.rows == 900 and a.refused == {"queue_full": 0, "deadline": 0, "draining": 0}


def test_overload_is_refused_at_once_with_retry_after(exported, bodies):
    # the admitted requests wait out the blocked model thread: a deadline well past it (with
    # the default 1 s, one admitted just as the block began ran out at the block's end: 504)
    big = {**max(bodies, key=lambda b: len(b["candidates"])), "timeout_ms": 10_000}
    n = len(big["candidates"])
    with serving(model_dir=exported, max_candidates=n, max_queued_rows=3 * n) as (url, app):
        model = app.state.slot.current
        blocked = model.executor.submit(time.sleep, 1.0)  # the model thread is busy meanwhile
        load = Load(url, encoded([big]), concurrency=6)
        asyncio.run(load.run(0.5))
        blocked.result()
        r = load.result
        # 3n rows fit: three requests were admitted and answered; every other was refused
        assert r.statuses[200] == 3 and r.statuses[503] >= 3, r.summary()
        assert set(r.statuses) == {200, 503} and set(r.types) == {"overloaded"}, r.summary()
        assert max(r.refused_s) < 0.9  # refused while the model thread was still blocked
        assert r.missing_request_id == 0
        app.state.admission.rows += 3 * n
        refused = httpx.post(f"{url}/rank", json=big)
        app.state.admission.rows -= 3 * n
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "overloaded" in refused.json()["error"]["message"]
        shed = httpx.get(f"{url}/metrics").text
        assert 'ranker_shed_requests_total{reason="queue_full"}' in shed


def test_a_request_whose_deadline_passes_in_the_queue_gets_504_and_is_never_run(exported, bodies):
    first, late = bodies[0], bodies[1]
    with serving(model_dir=exported) as (url, app):
        httpx.post(f"{url}/rank", json=late)  # its user is cached: it goes straight to the queue
        engine = app.state.slot.current.engine
        real, seen = engine.score, []

        def slow(*args):
            seen.append(len(args[1]))
            time.sleep(0.6)
            return real(*args)

        engine.score = slow
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{url}/rank", json=first, timeout=10)
            while not seen:
                time.sleep(0.005)
            resp = httpx.post(f"{url}/rank", json={**late, "timeout_ms": 150}, timeout=10)
            assert running.result().status_code == 200
        time.sleep(0.7)  # a run for the late request would have started by now
        engine.score = real
    assert resp.status_code == 504 and resp.json()["error"]["type"] == "timeout"
    assert seen == [len(first["candidates"])]  # the late request cost no model time


def test_a_deadline_the_queue_cannot_meet_is_shed_before_model_time(exported, bodies):
    with serving(model_dir=exported) as (url, app):
        batcher = app.state.slot.current.batcher
        app.state.admission.measured_rows_per_s = 100.0  # as measured on a very slow machine
        app.state.admission.rows += 50  # 0.5 s of rows already admitted
        runs = len(batcher.recent_rows)
        r = httpx.post(f"{url}/rank", json={**bodies[0], "timeout_ms": 100}, timeout=10)
        app.state.admission.rows -= 50
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded"
        assert "timeout" in r.json()["error"]["message"] and "retry-after" in r.headers
        assert len(batcher.recent_rows) == runs  # nothing ran for it


def test_refusals_carry_the_status_of_their_real_cause(exported, samples):
    """After a run of small bodies an idle server serves a large one; a declared oversized body
    is 413 and too many candidates 422, never 503."""
    contract, s = samples
    body, _ = request_for(contract, s, int(s["row_user"][0]))
    small = {**body, "candidates": body["candidates"][:1]}
    settings = Settings(
        model_dir=exported, max_candidates=600, max_queued_rows=600, max_body_bytes=1 << 20
    )
    with TestClient(create_app(settings)) as c:
        for _ in range(30):
            assert c.post("/rank", json=small).status_code == 200
        big = {**body, "candidates": [body["candidates"][0]] * 600}
        big["user_features"] = {
            **body["user_features"],
            "110_14": {"ids": list(range(5000)), "weights": [1.0] * 5000},
        }
        assert c.post("/rank", json=big).status_code == 200  # idle: never refused
        over = {**body, "candidates": [body["candidates"][0]] * 601}
        r = c.post("/rank", json=over)
        assert r.status_code == 422 and r.json()["error"]["field"] == "candidates"
        r = c.post("/rank", content=b" " * (2 << 20))
        assert r.status_code == 413
