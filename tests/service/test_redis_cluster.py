"""service/user_cache.py against a real three-node Redis Cluster (RANKER_REDIS_URL=
redis+cluster://host:port): shared between clients, keys spread over every node, a node killed
under load costs misses, never a failed request."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import encoded, serving

from loadtest.load import Load
from loadtest.parts import RedisClusterServer
from service.config import Settings
from service.main import create_app
from service.user_cache import LocalLRU, RedisTier, UserCache, user_key


@pytest.fixture
def cluster():
    with RedisClusterServer(n=3, node_timeout_ms=1000) as c:
        yield c


def test_a_cluster_is_shared_between_clients_and_holds_keys_on_every_node(cluster):
    model, dim, users = "m" * 64, 8, 200
    ids, vals = np.zeros((1, 4), np.int64), np.ones((1, 4), np.float32)
    keys = [user_key(model, f"user-{i}", ids, vals) for i in range(users)]
    assert not any("{" in k for k in keys)  # no hash tag: the key's CRC16 picks the slot

    def vector(i: int) -> np.ndarray:
        return np.full(dim, i, np.float32)

    async def fill_then_read() -> tuple[list[bool], list[bool]]:
        async def through(seed: int, compute) -> list[bool]:
            # a tier of its own (a client, a process tier) asking node `seed` for the slot map
            tier = RedisTier(cluster.url(seed), timeout_ms=1000, ttl_s=600)
            cache = UserCache(model, dim, LocalLRU(users, 600), tier)
            try:
                hits = []
                for i, key in enumerate(keys):
                    vec, hit = await cache.get_or_compute(key, compute(i))
                    assert np.array_equal(vec, vector(i))
                    hits.append(hit)
                return hits
            finally:
                await tier.close()  # waits for the writes in the background

        def compute(i):
            async def run():
                return vector(i)

            return run

        def never(i):
            async def run():
                raise AssertionError(f"user {i} computed again: the cluster did not answer")

            return run

        return await through(0, compute), await through(2, never)

    first, second = asyncio.run(fill_then_read())
    assert not any(first) and all(second)
    sizes = [cluster.dbsize(i) for i in range(3)]
    # each node owns a third of the slots: about 67 keys each (a binomial spread: sd 6.7)
    assert sum(sizes) == users and min(sizes) >= 35, sizes


def test_the_service_shares_user_vectors_through_a_cluster(exported, bodies, cluster):
    body = {**bodies[0], "user_id": "cluster-user"}
    with TestClient(create_app(Settings(model_dir=exported, redis_url=cluster.url(0)))) as a:
        assert a.post("/rank", json=body).json()["user_cache"] == "miss"
    # another process tier, and another node asked first: the cluster answers
    with TestClient(create_app(Settings(model_dir=exported, redis_url=cluster.url(1)))) as b:
        assert b.post("/rank", json=body).json()["user_cache"] == "hit"
        assert b.app.state.metrics.cache.labels("redis", "hit")._value.get() == 1
    assert sum(cluster.dbsize(i) for i in range(3)) == 1


def test_a_cluster_node_killed_and_restarted_under_load_fails_no_request(exported, bodies, cluster):
    # no process tier: every request asks the cluster. The node killed is the one the service
    # was given: after the first slot map it knows the others
    settings = dict(model_dir=exported, redis_url=cluster.url(0), cache_size=0)
    with serving(**settings) as (url, app):
        m = app.state.metrics

        def count(op: str, outcome: str) -> float:
            return m.redis.labels(op, outcome)._value.get()

        def redis_hits() -> float:
            return m.cache.labels("redis", "hit")._value.get()

        def wait(what: str, done, timeout_s: float = 30.0) -> None:
            end = time.monotonic() + timeout_s
            while not done():
                assert time.monotonic() < end, what
                time.sleep(0.05)

        load = Load(url, encoded(bodies), concurrency=4).start()
        try:
            wait("no hit from the cluster", lambda: redis_hits() > 0)
            cluster.nodes[0].kill()
            # a third of the keys fail at once, then all: once the others call the node failed
            # (node timeout 1 s) the cluster is down, every node refuses. The breaker opens
            wait("the breaker never opened", lambda: count("breaker", "open") >= 1)
            down = "cluster_state:fail"
            wait("the cluster never went down", lambda: down in cluster.ask(1, "cluster", "info"))
            load.wait_for(60)
            errors = count("get", "error")
            cluster.nodes[0].start()
            cluster.wait_ok()
            hits = redis_hits()
            wait("no hit after the restart", lambda: redis_hits() > hits)
            load.wait_for(40)
        finally:
            r = load.stop()
    assert r.failed == 0, r.summary()
    assert errors >= 1 and m.redis_open._value.get() == 0  # closed again after the restart
    assert r.user_cache["miss"] > 0 and r.user_cache["hit"] > 0


def test_the_user_store_may_be_a_cluster(exported, samples, small_generated, cluster):
    """`ranker users load` into a cluster spreads the users over every node, and the service
    reads a user's stored features from it (RANKER_USER_STORE=redis+cluster://...): the same
    scores as the features sent in the request."""
    from test_user_store import STORE_MS, candidates, close, features_body, ranks, scores

    from ranker.users import main as users_main
    from ranker.users import read_users

    url, data = cluster.url(1), small_generated
    assert users_main(["load", "--data", str(data), "--redis", url]) == 0
    found, _ = read_users(data, ["train", "test"])
    per_node = [cluster.dbsize(i) for i in range(len(cluster.nodes))]
    assert sum(per_node) == len(found) and min(per_node) > 0
    contract, s = samples
    cands = candidates(contract, s)
    settings = Settings(model_dir=exported, user_store=url, user_store_timeout_ms=STORE_MS)
    with TestClient(create_app(settings)) as c:
        for uid, feats in list(found.items())[:5]:
            by_id = ranks(c, {"user_id": uid, "candidates": cands})
            given = ranks(
                c, {"user_id": uid, "user_features": features_body(feats), "candidates": cands}
            )
            assert by_id["user"] == "store" and close(scores(by_id), scores(given))
    assert users_main(["load", "--data", str(data), "--redis", "redis+cluster://127.0.0.1:1"]) == 1
