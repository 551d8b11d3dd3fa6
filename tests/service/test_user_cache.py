"""service/user_cache.py: keys, the process tier's bounds, single flight, log hygiene."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.user_cache import LocalLRU, UserCache, redacted, user_key


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
