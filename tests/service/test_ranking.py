"""service/ranking.py (with served.py, user_cache.py and response.py) on a fake engine: the
serving logic alone, in milliseconds."""

from __future__ import annotations

import asyncio
import json
import threading

import msgspec
import pytest
from fakes import FakeEngine, fake_ranker

from service import ranking, request
from service.errors import ScoringError, Timeout


def body(user: str = "u1", n: int = 5, **over) -> bytes:
    b = {
        "user_id": user,
        "user_features": {"101": 7, "109_14": {"ids": [1, 2, 3], "weights": [5.0, 1.0, 2.0]}},
        "candidates": [
            {"item_id": f"i{i}", "features": {"205": i, "206": i % 3}, "price": 1.0 + i}
            for i in range(n)
        ],
        **over,
    }
    return json.dumps(b).encode()


def run(coro):
    return asyncio.run(coro)


def test_items_come_back_sorted_with_their_scores():
    async def go():
        r = fake_ranker()
        return await r.rank(body(fusion={"c": 1.0}, top_k=3))

    out = run(go())
    scores = [it.score for it in out.items]
    assert len(out.items) == 3 and scores == sorted(scores, reverse=True)
    assert all(abs(it.pctcvr - it.pctr * it.pcvr) < 1e-6 for it in out.items)
    assert out.fusion.c == 1.0 and out.model_version == "fake/v1"


def test_extreme_valid_numbers_give_finite_scores():
    """The largest weights, prices and exponents the rules accept, on probabilities at 0 and 1:
    every score finite (float64 fusion, floors at 1e-12)."""

    async def go():
        r = fake_ranker()
        b = json.loads(body(fusion={"a": -4.0, "b": 4.0, "c": 4.0}))
        b["user_features"]["109_14"]["weights"] = [1e6, 1e6, 1e6]
        b["candidates"][0]["price"], b["candidates"][1]["price"] = 1e9, 0.0
        out = [await r.rank(json.dumps(b).encode())]
        b["fusion"] = {"policy": "sum", "a": 4.0, "b": -4.0, "c": -4.0}
        out.append(await r.rank(json.dumps(b).encode()))
        return out

    for out in run(go()):
        raw = msgspec.json.encode(out.items)  # every score (`arm` is null without arms)
        assert b"null" not in raw and b"Infinity" not in raw and b"NaN" not in raw


def test_a_non_finite_score_fails_the_request_instead_of_ranking_first():
    async def go():
        engine = FakeEngine()
        engine.poison = True
        return await fake_ranker(engine).rank(body())

    with pytest.raises(ScoringError):
        run(go())


def test_a_waiter_outlives_the_timeout_of_the_request_computing_its_user():
    """Single flight: the first request's deadline passes while the user tower runs; a second
    request for the same user, with time to spare, still gets the shared result (it used to get
    the first one's cancellation: a plain-text 500 with no request id)."""

    async def go():
        engine = FakeEngine()
        engine.user_delay_s = 0.3
        r = fake_ranker(engine)
        short = asyncio.ensure_future(r.rank(body(timeout_ms=50)))
        await asyncio.sleep(0.01)
        long = asyncio.ensure_future(r.rank(body(timeout_ms=5000)))
        results = await asyncio.gather(short, long, return_exceptions=True)
        return engine, results

    engine, (short, long) = run(go())
    assert isinstance(short, Timeout)
    assert not isinstance(long, BaseException) and long.user_cache == "hit"
    assert engine.user_runs == 1


def test_a_failed_user_computation_reaches_every_waiter_as_its_own_error():
    async def go():
        engine = FakeEngine()
        engine.user_delay_s = 0.05

        def broken(*a):
            raise RuntimeError("tower broke")

        engine.user_repr = broken
        r = fake_ranker(engine)
        return await asyncio.gather(r.rank(body()), r.rank(body()), return_exceptions=True)

    results = run(go())
    assert all(isinstance(x, RuntimeError) for x in results)


def test_large_bodies_are_decoded_and_encoded_off_the_event_loop(monkeypatch):
    seen: dict[str, set[int]] = {"decode": set(), "encode": set()}
    real_decode = request.decode_sized

    def decode(*a):
        seen["decode"].add(threading.get_ident())
        return real_decode(*a)

    monkeypatch.setattr(request, "decode_sized", decode)

    async def go():
        r = fake_ranker()
        model = r.slot.current
        real_encode = model.encoder.encode

        def encode(req, price=None):
            seen["encode"].add(threading.get_ident())
            return real_encode(req, price)

        model.encoder.encode = encode
        small = body(n=3)
        large = body(n=2000)
        assert len(small) < ranking.OFF_LOOP_BYTES <= len(large)
        await r.rank(small)
        on_loop = set(seen["decode"]) | set(seen["encode"])
        seen["decode"].clear(), seen["encode"].clear()
        await r.rank(large)
        return threading.get_ident(), on_loop

    loop_thread, on_loop = run(go())
    assert on_loop == {loop_thread}  # a small body stays on the loop (a hop costs more)
    assert loop_thread not in seen["decode"] | seen["encode"] and seen["decode"] and seen["encode"]


def test_the_candidate_cap_stops_before_decoding_the_candidates(monkeypatch):
    calls = []
    real = request._decoder

    class Spy:
        def decode(self, raw):
            calls.append(len(raw))
            return real.decode(raw)

    monkeypatch.setattr(request, "_decoder", Spy())

    async def go():
        r = fake_ranker(max_candidates=100)
        with pytest.raises(request.ClientError, match="101 candidates; at most 100"):
            await r.rank(body(n=101))
        await r.rank(body(n=100))

    run(go())
    assert len(calls) == 1  # only the request within the cap was decoded


def test_a_request_over_the_batch_size_is_split_into_runs():
    async def go():
        engine = FakeEngine()
        r = fake_ranker(engine, max_batch_rows=64)
        out = await r.rank(body(n=150))
        return engine, out

    engine, out = run(go())
    assert len(out.items) == 150 and max(engine.batches) <= 64 and sum(engine.batches) == 150


def test_a_refused_request_is_never_decoded(monkeypatch):
    """Admission judges a scan of the body (rows, timeout): refusing costs no decoding, and no
    request waits unadmitted in a decode queue."""
    from service.errors import Overloaded

    calls = []
    real = request._decoder

    class Spy:
        def decode(self, raw):
            calls.append(1)
            return real.decode(raw)

    monkeypatch.setattr(request, "_decoder", Spy())

    async def go():
        r = fake_ranker(max_rows=10)
        r.admission.admit(8, timeout_s=1.0)  # rows of another request, still queued
        with pytest.raises(Overloaded):
            await r.rank(body(n=5))

    run(go())
    assert calls == []
