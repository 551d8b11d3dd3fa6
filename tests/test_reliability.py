"""Faults injected for real: overload, deadlines, Redis killed / restarted / hung, models reloaded
under load (and broken ones refused), request ids, and no exception text for clients."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from support import request_for, serving

from loadtest.harness import Load, RedisServer, ServiceProcess, copy_version, free_port
from service.admission import Admission, Refused
from service.batcher import Batcher, DeadlineExceeded
from service.config import Settings
from service.main import create_app
from service.server import DrainingServer
from service.user_cache import Breaker, decode_value, encode_value

TOKEN = "s3cret-token-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def bodies(samples) -> list[dict]:
    """One /rank body per sample user, with that user's sample rows as candidates."""
    contract, s = samples
    return [request_for(contract, s, int(u))[0] for u in np.unique(s["row_user"])]


def encoded(bodies: list[dict]) -> list[bytes]:
    return [json.dumps(b).encode() for b in bodies]


# ---- admission and deadlines, as units ---------------------------------------------------------
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


def test_a_job_whose_deadline_passed_in_the_queue_is_never_run():
    ran: list[list[int]] = []

    def run_batch(jobs):
        time.sleep(0.05)
        ran.append(jobs)
        return jobs

    async def go():
        b = Batcher(run_batch, lambda j: 1, max_rows=1)
        b.start()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(b.submit(1))  # runs for 50 ms
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(b.submit(2, deadline=loop.time() + 0.01))
        fine = asyncio.ensure_future(b.submit(3, deadline=loop.time() + 5))
        assert await first == 1 and await fine == 3
        with pytest.raises(DeadlineExceeded):
            await late
        await b.close()
        return b

    b = asyncio.run(go())
    assert ran == [[1], [3]] and b.expired == 1 and b.rows_per_s is not None


def test_breaker_opens_after_failures_in_a_row_and_probes_once():
    now = [0.0]
    br = Breaker(failures=2, reset_s=1.0, clock=lambda: now[0])
    assert br.allow() and not br.failure() and br.allow()
    assert br.failure() and br.is_open and not br.allow()  # opened: calls skip Redis
    now[0] = 1.5
    assert br.allow() and not br.allow()  # one probe at a time
    assert not br.failure() and not br.allow()  # the probe failed: open again
    now[0] = 3.0
    assert br.allow() and br.success() and br.allow() and not br.is_open


# ---- overload over real HTTP -------------------------------------------------------------------
def test_overload_is_refused_at_once_with_retry_after(exported, bodies):
    big = max(bodies, key=lambda b: len(b["candidates"]))
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


# ---- Redis faults ------------------------------------------------------------------------------
def test_redis_killed_and_restarted_under_load_fails_no_request(exported, bodies):
    with RedisServer() as redis:
        # no process tier: every request goes to Redis, the hardest case for a dead Redis
        settings = dict(model_dir=exported, redis_url=redis.url, cache_size=0)
        with serving(**settings) as (url, app):
            metrics = app.state.metrics
            load = Load(url, encoded(bodies), concurrency=4).start()
            load.wait_for(40)
            redis.kill()
            load.wait_for(60)
            opened = metrics.redis.labels("breaker", "open")._value.get()
            redis.start()
            ok_before = metrics.redis.labels("get", "ok")._value.get()
            deadline = time.monotonic() + 30
            while metrics.redis.labels("get", "ok")._value.get() <= ok_before:
                assert time.monotonic() < deadline, "never reconnected to the restarted Redis"
                time.sleep(0.05)
            load.wait_for(40)
            r = load.stop()
    assert r.failed == 0, r.summary()
    assert opened >= 1 and metrics.redis.labels("get", "error")._value.get() >= 1
    assert metrics.redis_open._value.get() == 0  # closed again after the restart


def test_a_hung_redis_does_not_stall_the_service(exported, bodies):
    with RedisServer() as redis:
        settings = dict(model_dir=exported, redis_url=redis.url, cache_size=0)
        with serving(**settings) as (url, app):
            load = Load(url, encoded(bodies), concurrency=4).start()
            load.wait_for(20)
            redis.pause()  # SIGSTOP: connections open, nothing answers
            try:
                load.wait_for(60)
                health = httpx.get(f"{url}/healthz", timeout=1)
                assert app.state.metrics.redis_open._value.get() == 1
            finally:
                redis.resume()
            r = load.stop()
    assert health.status_code == 200
    assert r.failed == 0, r.summary()


def test_redis_values_of_another_version_shape_or_dtype_are_misses(exported, bodies, samples):
    vec = np.arange(400, dtype=np.float32)
    good = encode_value("esmm/v1", vec)
    assert np.array_equal(decode_value(good, "esmm/v1", 400), vec)
    assert decode_value(good, "esmm/v2", 400) is None  # another model version
    assert decode_value(good, "esmm/v1", 399) is None  # another shape
    assert decode_value(encode_value("esmm/v1", vec[:-1]), "esmm/v1", 400) is None
    assert decode_value(good[:-2], "esmm/v1", 400) is None  # truncated
    as_f64 = good[: -vec.nbytes] + vec.astype(np.float64).tobytes()
    assert decode_value(as_f64, "esmm/v1", 400) is None  # another dtype
    assert decode_value(b"garbage", "esmm/v1", 400) is None
    nan = encode_value("esmm/v1", np.full(400, np.nan, np.float32))
    assert decode_value(nan, "esmm/v1", 400) is None
    # through the service: a poisoned value in a real Redis is never used
    with RedisServer() as redis:
        settings = Settings(model_dir=exported, redis_url=redis.url)
        with TestClient(create_app(settings)) as c:
            first = c.post("/rank", json=bodies[0]).json()
            digest = c.get("/v1/model").json()["model_digest"]
        import redis as redis_client

        r = redis_client.Redis.from_url(redis.url)
        (key,) = r.keys("ranker:*")
        r.set(key, encode_value(digest, np.zeros(400, np.float32) + 9)[:-4])
        with TestClient(create_app(settings)) as c:
            again = c.post("/rank", json=bodies[0]).json()
        assert again["user_cache"] == "miss" and again["items"] == first["items"]
        assert decode_value(r.get(key), digest, 400) is not None  # rewritten


# ---- model reload ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_model(trained_run, tmp_path_factory):
    """The same run with its CTR tower's output bias moved by +0.5: really exported (checked by
    export's parity test), and scoring differently from the first."""
    from training.export import export

    run = tmp_path_factory.mktemp("run-b")
    ckpt = torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    key = max(
        (k for k, v in ckpt["state_dict"].items() if k.startswith("ctr.") and v.shape == (1,)),
        key=len,
    )
    ckpt["state_dict"][key] += 0.5
    torch.save(ckpt, run / "checkpoint.pt")
    out = tmp_path_factory.mktemp("models-b") / "esmm" / "b"
    export(run, out)
    return out


def reference(model_dir, bodies: list[dict]) -> list[dict]:
    """item id -> pctcvr of each body, as the model in `model_dir` scores it."""
    with TestClient(create_app(Settings(model_dir=model_dir))) as c:
        return [
            {it["item_id"]: it["pctcvr"] for it in c.post("/rank", json=b).json()["items"]}
            for b in bodies
        ]


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


def test_admin_endpoints_need_the_token(exported, tmp_path):
    with TestClient(create_app(Settings(model_dir=exported))) as c:
        r = c.post("/admin/reload")
        assert r.status_code == 403 and "RANKER_ADMIN_TOKEN" in r.json()["error"]["message"]
    with TestClient(create_app(Settings(model_dir=exported.parent, admin_token=TOKEN))) as c:
        assert c.post("/admin/reload").status_code == 401
        r = c.post("/admin/reload", headers={"authorization": "Bearer nope"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/admin/reload", headers=AUTH, json={"path": "../../etc"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "path"
        r = c.post("/admin/reload", headers=AUTH, json={"path": "nothing-here"})
        assert r.status_code == 409 and "not a model version" in r.json()["error"]["message"]
        assert c.post("/admin/reload", headers=AUTH).json()["status"] == "unchanged"


# ---- request ids and opaque errors -------------------------------------------------------------
def test_every_response_carries_a_request_id_that_is_in_the_logs(exported, bodies, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    with TestClient(create_app(Settings(model_dir=exported, max_body_bytes=4096))) as c:
        ok = c.post("/rank", json=bodies[0], headers={"x-request-id": "trace-42.a"})
        assert ok.headers["x-request-id"] == "trace-42.a"
        for r in (
            c.post("/rank", json={"user_id": 1}),
            c.post("/rank", content=b"{" * 5000),
            c.get("/nowhere"),
            c.get("/healthz", headers={"x-request-id": "bad id with spaces\x01"}),
        ):
            rid = r.headers["x-request-id"]
            assert len(rid) == 32 and rid != "bad id with spaces"
            if r.status_code >= 400:
                assert r.json()["error"]["request_id"] == rid
    logged = {rec.request_id for rec in caplog.records if rec.name == "service.access"}
    assert "trace-42.a" in logged and rid in logged


def test_an_unexpected_failure_is_an_opaque_500_with_the_trace_only_in_the_log(
    exported, bodies, caplog
):
    with TestClient(create_app(Settings(model_dir=exported)), raise_server_exceptions=False) as c:
        engine = c.app.state.slot.current.engine

        def broken(*args):
            raise RuntimeError("secret internals /etc/passwd")

        engine.score = broken
        r = c.post("/rank", json=bodies[0])
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "internal" and "secret" not in r.text
        assert "Traceback" not in r.text
        assert c.get("/healthz").status_code == 200  # the service goes on
    assert any("secret internals" in (rec.exc_text or "") for rec in caplog.records)


# ---- shutdown ----------------------------------------------------------------------------------
def test_sigterm_turns_readiness_false_then_drains_in_flight_requests(exported, bodies):
    settings = Settings(
        model_dir=exported, port=free_port(), shutdown_delay_s=0.3, shutdown_grace_s=10
    )
    app = create_app(settings)
    server = DrainingServer(app, settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    while not server.started:
        time.sleep(0.02)
    engine = app.state.slot.current.engine
    real = engine.score

    def slow(*args):
        time.sleep(0.8)
        return real(*args)

    engine.score = slow
    with ThreadPoolExecutor(3) as pool:
        three = [{**b, "timeout_ms": 10_000} for b in bodies[:3]]
        in_flight = [pool.submit(httpx.post, f"{url}/rank", json=b, timeout=30) for b in three]
        while app.state.admission.rows < sum(len(b["candidates"]) for b in three):
            time.sleep(0.005)  # all three admitted
        server.handle_exit(signal.SIGTERM, None)  # what the signal calls
        assert httpx.get(f"{url}/readyz").status_code == 503  # first: readiness
        time.sleep(0.5)  # past the delay: admission has stopped
        assert app.state.admission.draining
        answers = [f.result() for f in in_flight]
    thread.join(15)
    assert not thread.is_alive()
    assert [a.status_code for a in answers] == [200, 200, 200]  # in flight: finished
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/rank", json=bodies[0])


def test_sigterm_under_load_exits_0_and_drops_nothing(exported, bodies, tmp_path):
    svc = ServiceProcess(
        log_path=tmp_path / "service.log",
        model_dir=exported,
        shutdown_delay_s=1.0,
        reload_poll_s=0,
    ).wait_ready()
    load = Load(svc.url, encoded(bodies), concurrency=4).start()
    load.wait_for(30)
    svc.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert httpx.get(f"{svc.url}/readyz").status_code == 503
    time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    result = load.stop()  # what a balancer does once readiness is false
    assert svc.proc.wait(30) == 0
    log = (tmp_path / "service.log").read_text()
    assert "SIGTERM: draining" in log and "Traceback" not in log
    assert result.failed == 0 and result.total >= 30, result.summary()


# ---- defects of the issue "one owner for every contract" ---------------------------------------
def test_two_exports_sharing_a_name_never_share_user_vectors(exported, second_model, bodies):
    """Every image build exports `esmm/baked`: the second build's model must not be served the
    first one's cached user representation (the cache keys on the model's content)."""
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        a = copy_version(exported, Path(tmp) / "a", "baked")
        b = copy_version(second_model, Path(tmp) / "b", "baked")
        one = {**bodies[0], "user_id": "same-user"}
        ref_b = reference(b, [one])[0]
        with TestClient(create_app(Settings(model_dir=a, redis_url=redis.url))) as c:
            assert c.post("/rank", json=one).json()["user_cache"] == "miss"
        with TestClient(create_app(Settings(model_dir=b, redis_url=redis.url))) as c:
            out = c.post("/rank", json=one).json()
            digest_b = c.get("/v1/model").json()["model_digest"]
        assert out["model_version"] == "esmm/baked" and out["user_cache"] == "miss"
        assert all(abs(it["pctcvr"] - ref_b[it["item_id"]]) < 1e-6 for it in out["items"])
        with TestClient(create_app(Settings(model_dir=a, redis_url=redis.url))) as c:
            assert c.get("/v1/model").json()["model_digest"] != digest_b
            assert c.post("/rank", json=one).json()["user_cache"] == "hit"  # its own vector


def test_a_manifest_whose_digest_does_not_match_its_content_is_refused(exported, tmp_path):
    from service.engine import Engine, ModelError

    copy = copy_version(exported, tmp_path, "tampered")
    m = json.loads((copy / "manifest.json").read_text())
    m["calibration"] = {"pctr": {"method": "platt", "a": 2.0, "b": 0.0}}  # changes every score
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="digest"):
        Engine(copy)


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
        for path in ("esmm/v0", "esmm/missing", "esmm/v1\x00x"):
            r = c.post("/admin/reload", headers=AUTH, json={"path": path})
            assert r.status_code in (409, 422) and str(tmp_path) not in r.text, r.text


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
