"""service/engine.py: the item scorer through I/O binding and CUDA graph buckets.

Every test runs on the CPU provider (I/O binding and the graph bookkeeping work there too), and
again on CUDA where it really runs (the GPU check, gpu/check.sh, runs this file there with the
model it carried: RANKER_TEST_MODEL). The plain run is the reference throughout: an option must
never change a score.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.engine import Engine, ScorerOptions
from service.model_folder import ModelError
from service.scorers import MIN_BUCKET, Buffers, GraphScorer, PageLock, bucket, bucket_users

KEYS = ("pctr", "pcvr", "pctcvr")


@pytest.fixture(scope="module")
def model(request) -> Path:
    """The carried model on a GPU machine (RANKER_TEST_MODEL), else the session's export."""
    given = os.environ.get("RANKER_TEST_MODEL")
    return Path(given) if given else request.getfixturevalue("exported")


@pytest.fixture(scope="module")
def cuda_runs(model) -> bool:
    return Engine(model, "auto").providers[0] == "CUDAExecutionProvider"


@pytest.fixture(params=["cpu", "cuda"])
def provider(request, cuda_runs) -> str:
    if request.param == "cuda" and not cuda_runs:
        pytest.skip("CUDA does not run here (the GPU check runs these on a GPU)")
    return request.param


@pytest.fixture(scope="module")
def rows(model):
    """The stored sample rows, encoded: (user reprs source, row_user, item ids, item weights)."""
    e = Engine(model, "cpu")
    s = np.load(model / e.manifest.samples)
    uid, uw = e.contract.hash_side("user", s["user_ids"], s["user_vals"])
    iid, iw = e.contract.hash_side("item", s["item_ids"], s["item_vals"])
    return e.user_repr(uid, uw), s["row_user"].astype(np.int64), iid, iw


def draw(rows, n: int, users: int, seed: int):
    """n candidate rows of `users` users drawn from the sample rows (any row for any user)."""
    reprs, _, iid, iw = rows
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(iid), n)
    return (
        reprs[rng.integers(0, len(reprs), users)],
        rng.integers(0, users, n).astype(np.int64),
        iid[pick],
        iw[pick],
    )


def same(a, b, provider: str) -> bool:
    """Equal on the CPU; on CUDA within a tenth of the export's parity (engine._differs)."""
    if provider == "cpu":
        return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in KEYS)
    return all(np.abs(getattr(a, k) - getattr(b, k)).max() <= 1e-6 for k in KEYS)


def test_buckets_are_powers_of_two_from_the_smallest():
    assert [bucket(n) for n in (1, 63, 64, 65, 1000, 1024, 1025)] == [
        MIN_BUCKET,
        64,
        64,
        128,
        1024,
        1024,
        2048,
    ]
    assert bucket_users(64) == 64 and bucket_users(16384) == 256
    assert GraphScorer.buckets(2048) == [64, 128, 256, 512, 1024, 2048]
    assert GraphScorer.buckets(3000)[-1] == 4096  # the batch's own rows fit the top bucket


def test_bound_runs_score_what_plain_runs_do(model, rows, provider):
    plain = Engine(model, provider, scorer=ScorerOptions(io_binding="off"))
    bound = Engine(model, provider, scorer=ScorerOptions(io_binding="on", max_rows=256))
    bound.warm()
    assert bound.scorer_mode.startswith("I/O binding"), bound.scorer_mode
    assert ("page-locked" in bound.scorer_mode) == (provider == "cuda")
    assert bound._bound.buf.rows >= 256  # allocated at warm-up, before traffic
    # sizes below, at and past the buffers (they grow), then small again: earlier rows left in
    # the buffers never reach a score
    for i, (n, users) in enumerate([(1, 1), (100, 3), (256, 16), (700, 5), (3000, 40), (5, 2)]):
        args = draw(rows, n, users, seed=i)
        assert same(plain.score(*args), bound.score(*args), provider), (n, users)
    assert bound._bound.buf.rows == 4096 and bound._bound.buf.users == 64
    grown = bound._bound.buf
    bound.score(*draw(rows, 10, 1, seed=9))
    assert bound._bound.buf is grown  # within capacity: the same buffers, nothing allocated


def test_page_locked_buffers_own_whole_pages_and_are_released():
    """cudaHostRegister locks pages: two buffers sharing one could not both be registered. A
    fake CUDA runtime records what the buffers register (on a GPU the real one is used)."""

    class Cudart:
        def __init__(self):
            self.live: dict[int, int] = {}

        def cudaHostRegister(self, ptr, size, flags):
            p, n = ptr.value, size.value
            assert p % 4096 == 0 and n % 4096 == 0
            assert all(p + n <= q or q + m <= p for q, m in self.live.items()), "a shared page"
            self.live[p] = n
            return 0

        def cudaHostUnregister(self, ptr):
            del self.live[ptr.value]
            return 0

    pin = PageLock(cuda=False)
    pin.lib = cudart = Cudart()
    bufs = [Buffers(rows, 3, 400, 32, pin) for rows in (64, 100, 1000)]
    assert len(cudart.live) == 3 * 7  # inputs and outputs of each
    b = bufs[1]
    assert b.item_ids.shape == (100, 32) and b.item_ids.dtype == np.int64 and not b.item_ids.any()
    b.fill(np.ones((3, 400), np.float32), np.arange(100) % 3, np.ones((100, 32), np.int64), 0)
    assert b.user_repr[:3].all() and b.item_ids.all() and b.user_index[:3].tolist() == [0, 1, 2]
    del bufs, b
    gc.collect()
    assert not cudart.live  # dropped buffers are unregistered


def test_io_binding_auto_is_on_with_cuda_only(model, provider):
    e = Engine(model, provider)
    assert (e._bound is not None) == (provider == "cuda")


def graph_scorer(model, provider) -> tuple[Engine, GraphScorer]:
    """A graph scorer as the engine makes it for CUDA; on the CPU the same bookkeeping over a
    CPU session and CPU buffers (ONNX Runtime captures nothing there)."""
    if provider == "cuda":
        e = Engine(model, "cuda", scorer=ScorerOptions(cuda_graph=True, max_rows=512))
        assert e._graphs is not None, e.scorer_mode
        return e, e._graphs
    e = Engine(model, "cpu", scorer=ScorerOptions(io_binding="on"))
    e._graphs = GraphScorer(e.sessions["item_scorer"], PageLock(False), device="cpu")
    return e, e._graphs


def test_graph_buckets_pad_runs_and_keep_their_scores(model, rows, provider):
    plain = Engine(model, provider, scorer=ScorerOptions(io_binding="off"))
    e, graphs = graph_scorer(model, provider)
    for i, (n, users) in enumerate([(64, 1), (100, 3), (128, 2), (1000, 15), (70, 4), (1, 1)]):
        args = draw(rows, n, users, seed=10 + i)
        got = graphs.run(*args)
        assert got is not None and all(len(x) == n for x in got)
        want = plain.score_raw(*args)
        assert same(want, e.score_raw(*args), provider), (n, users)
    assert sorted(graphs.graphs) == [64, 128, 1024]  # one graph per bucket, kept
    assert graphs.max_rows == 1024
    # more users than a bucket holds: not a graph run (the bound run takes it)
    too_many = draw(rows, 100, bucket_users(128) + 1, seed=30)
    assert graphs.run(*too_many) is None
    assert same(plain.score_raw(*too_many), e.score_raw(*too_many), provider)


def test_cuda_graphs_are_captured_at_warm_up(model, provider):
    if provider == "cpu":
        e = Engine(model, "cpu", scorer=ScorerOptions(io_binding="on", cuda_graph=True))
        assert e._graphs is None and "CUDA graphs" not in e.scorer_mode  # clean fallback
        return
    e = Engine(model, "cuda", scorer=ScorerOptions(cuda_graph=True, max_rows=1024))
    e.warm()
    assert sorted(e._graphs.graphs) == [64, 128, 256, 512, 1024], e.scorer_mode


def test_an_option_that_fails_its_check_is_turned_off_and_serving_goes_on(model, rows, caplog):
    e, graphs = graph_scorer(model, "cpu")
    real = graphs.run
    graphs.run = lambda *a: [x + 0.01 for x in real(*a)]  # a broken graph: scores moved
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        e.warm()
    assert e._graphs is None and e._bound is not None
    assert any("CUDA graphs off" in r.message for r in caplog.records)

    def broken(*a):
        raise RuntimeError("CUDA failure 700: an illegal memory access")

    e._bound.run = broken
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        e.warm()  # parity against the export still holds: on plain runs
    assert e._bound is None and e.scorer_mode == "plain runs"
    assert any("I/O binding off: RuntimeError" in r.message for r in caplog.records)


def test_a_graph_run_that_fails_while_serving_falls_back_to_the_bound_run(model, rows, caplog):
    plain = Engine(model, "cpu", scorer=ScorerOptions(io_binding="off"))
    e, graphs = graph_scorer(model, "cpu")

    def broken(*a):
        raise RuntimeError("capture failed")

    graphs.run = broken
    args = draw(rows, 300, 2, seed=40)
    with caplog.at_level(logging.ERROR, logger="service.engine"):
        got = e.score(*args)
    assert same(plain.score(*args), got, "cpu") and e._graphs is None


# ---- the GPU settings without a GPU ------------------------------------------------------------
def test_cuda_is_refused_cleanly_where_it_does_not_run(model, cuda_runs):
    if cuda_runs:
        pytest.skip("CUDA runs here: RANKER_PROVIDERS=cuda is served (the other tests prove it)")
    with pytest.raises(ModelError, match="RANKER_PROVIDERS=cuda but ONNX Runtime runs on"):
        Engine(model, "cuda")
    r = subprocess.run(
        [sys.executable, "-m", "service"],
        env={**os.environ, "RANKER_PROVIDERS": "cuda", "RANKER_MODEL_DIR": str(model)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "RANKER_PROVIDERS=cuda but ONNX Runtime runs on" in r.stderr


@pytest.mark.parametrize(
    "settings",
    [{"providers": "cpu", "cuda_graph": True}, {"io_binding": "off", "cuda_graph": True}],
)
def test_cuda_graphs_without_cuda_or_binding_are_a_bad_setting(settings):
    with pytest.raises(ValidationError, match="RANKER_CUDA_GRAPH needs CUDA and I/O binding"):
        Settings(**settings)


@pytest.fixture(scope="module")
def bodies_for(model) -> list[dict]:
    """/rank bodies of the stored sample users (tests/support.py builds them)."""
    from support import request_for

    e = Engine(model, "cpu")
    s = np.load(model / e.manifest.samples)
    return [request_for(e.contract, s, int(u))[0] for u in np.unique(s["row_user"])[:4]]


def test_the_service_scores_with_the_scorer_its_settings_name(model, bodies_for, provider):
    from fastapi.testclient import TestClient

    from service.main import create_app

    def served(**settings) -> tuple[str, list]:
        app = create_app(Settings(model_dir=model, providers=provider, **settings))
        with TestClient(app) as c:
            items = [c.post("/rank", json=b).json()["items"] for b in bodies_for]
            return app.state.slot.current.engine.scorer_mode, items

    plain_mode, plain = served(io_binding="off")
    graphs = {"cuda_graph": True} if provider == "cuda" else {}
    mode, bound = served(io_binding="on", max_batch_rows=1024, **graphs)
    assert plain_mode == "plain runs" and mode.startswith("I/O binding"), mode
    if provider == "cuda":
        assert "CUDA graphs (5 buckets captured, up to 1024 rows)" in mode, mode
    for a, b in zip(plain, bound, strict=True):
        assert [x["item_id"] for x in a] == [x["item_id"] for x in b]
        for x, y in zip(a, b, strict=True):
            assert all(abs(x[k] - y[k]) <= 1e-6 for k in KEYS)


def test_the_engine_takes_the_scorer_settings(model):
    s = Settings(model_dir=model, providers="cpu", io_binding="on", max_batch_rows=4096)
    e = Engine.from_settings(model, s)
    assert e.options == ScorerOptions("on", False, 4096) and e._bound is not None
