"""service/user_cache.py: keys, the process tier's bounds, single flight, log hygiene."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import encoded, reference, request_for, serving

from loadtest.load import Load
from loadtest.parts import RedisServer, copy_version
from service.config import Settings
from service.main import create_app
from service.redis_guard import Breaker, redacted
from service.user_cache import (
    LocalLRU,
    UserCache,
    decode_value,
    encode_value,
    user_key,
)


def test_keys_have_a_fixed_size_and_name_the_model_by_content():
    rows = np.arange(6, dtype=np.int64).reshape(1, 6), np.ones((1, 6), np.float32)
    short = user_key("a" * 64, "u", *rows)
    huge = user_key("a" * 64, "u" * 256, *rows)
    assert len(short) == len(huge) and short.startswith("ranker:u:" + "a" * 24 + ":")
    assert user_key("b" * 64, "u", *rows) != short  # another model's content
    assert user_key("a" * 64, 5, *rows) != user_key("a" * 64, "5", *rows)  # int vs str ids
    other = rows[0], rows[1] * 2
    assert user_key("a" * 64, "u", *other) != short  # other features


def test_the_process_tier_is_bounded_in_bytes_as_well_as_entries():
    lru = LocalLRU(size=1000, ttl_s=60, max_bytes=10_000)
    vec = np.zeros(400, np.float32)  # 1,600 bytes
    for i in range(20):
        lru.put(f"k{i}", vec)
    assert lru.bytes <= 10_000 and len(lru) == 10_000 // (1600 + 2 + 200)
    assert lru.get("k19") is not None and lru.get("k0") is None  # oldest evicted first
    lru.put("k19", vec)  # replacing an entry does not count it twice
    assert lru.bytes == sum(len(k) + 1600 + 200 for k in lru._data)


def test_concurrent_misses_for_one_user_compute_once():
    calls = []

    async def go():
        cache = UserCache("m" * 64, 3, LocalLRU(10, 60), None)
        gate = asyncio.Event()

        async def compute():
            calls.append(1)
            await gate.wait()
            return np.ones(3, np.float32)

        tasks = [asyncio.ensure_future(cache.get_or_compute("k", compute)) for _ in range(5)]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    out = asyncio.run(go())
    assert len(calls) == 1
    assert [hit for _, hit in out] == [False, True, True, True, True]
    assert all(np.array_equal(v, np.ones(3)) for v, _ in out)


def test_the_first_caller_giving_up_does_not_cancel_the_others():
    async def go():
        cache = UserCache("m" * 64, 3, LocalLRU(10, 60), None)

        async def compute():
            await asyncio.sleep(0.1)
            return np.ones(3, np.float32)

        first = asyncio.ensure_future(cache.get_or_compute("k", compute))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(cache.get_or_compute("k", compute))
        await asyncio.sleep(0.01)
        first.cancel()  # its deadline, a disconnect
        with pytest.raises(asyncio.CancelledError):
            await first
        vec, hit = await second
        return vec, hit, cache.local.get("k")

    vec, hit, cached = asyncio.run(go())
    assert hit and np.array_equal(vec, np.ones(3)) and cached is not None


def test_the_redis_password_never_reaches_a_log_line():
    assert redacted("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("redis://me:s3cret@h:1/0") == "redis://me:***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as redis:
        yield redis.url


def test_redis_tier_is_shared_between_instances(exported, samples, redis_url):
    contract, s = samples
    body, _ = request_for(contract, s, int(s["row_user"][0]))
    body["user_id"] = "redis-user"
    settings = Settings(model_dir=exported, redis_url=redis_url)
    with TestClient(create_app(settings)) as a:
        assert a.post("/rank", json=body).json()["user_cache"] == "miss"
    with TestClient(create_app(settings)) as b:  # a new process-local cache: Redis answers
        out = b.post("/rank", json=body).json()
        assert out["user_cache"] == "hit"
        text = b.get("/metrics").text
        assert 'ranker_user_cache_total{outcome="hit",tier="redis"} 1.0' in text


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
