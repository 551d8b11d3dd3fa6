"""The serving benchmark (loadtest/bench.py) and its naive baseline (loadtest/naive.py): the
baseline scores what the service scores, the report and the README block are written as
promised, and a short run goes end to end on a real exported model."""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx
import numpy as np
import orjson
import pytest

from features import manifest, parity
from loadtest import bench, bench_report, wrk
from loadtest.load import Load
from loadtest.parts import ServiceProcess
from service import request
from service.config import Settings


@pytest.fixture(scope="module")
def servers(exported, tmp_path_factory):
    """The real service and the naive baseline on the same exported model: {name: url}."""
    logs = tmp_path_factory.mktemp("servers")
    procs = {
        name: ServiceProcess(logs / f"{name}.log", module, model_dir=exported, reload_poll_s=0)
        for name, module in (("service", "service"), ("naive", "loadtest.naive"))
    }
    try:
        yield {name: p.wait_ready().url for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()


def rank(url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/rank", content=body, timeout=30)


def test_naive_baseline_scores_what_the_service_scores(servers, exported):
    tol = parity.tolerance(manifest.read(exported).kind)
    hit = bench.bodies(60, users=2)
    overrides = orjson.dumps({**orjson.loads(hit[1]), "fusion": {"a": 0.5, "c": 0.3}, "top_k": 7})
    for body in [*hit, overrides]:
        got = {name: rank(url, body) for name, url in servers.items()}
        assert all(r.status_code == 200 for r in got.values()), got
        service, naive = (got[k].json() for k in ("service", "naive"))
        assert naive["model_version"] == service["model_version"]
        assert naive["fusion"] == service["fusion"] and naive["user_cache"] == "miss"
        assert len(naive["items"]) == len(service["items"])
        by_id = {x["item_id"]: x for x in naive["items"]}
        assert set(by_id) == {x["item_id"] for x in service["items"]}  # top_k: the same items
        for key in ("pctr", "pcvr", "pctcvr"):
            want = np.array([x[key] for x in service["items"]])
            have = np.array([by_id[x["item_id"]][key] for x in service["items"]])
            assert parity.close(have, want, tol["atol"], tol["rtol"]), key
        want = np.array([x["score"] for x in service["items"]])
        have = np.array([by_id[x["item_id"]]["score"] for x in service["items"]])
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=tol["atol"])


def test_naive_baseline_refuses_what_the_service_refuses(servers):
    body = orjson.loads(bench.bodies(3, users=1)[0])
    body["candidates"][1]["price"] = -1.0
    got = {name: rank(url, orjson.dumps(body)) for name, url in servers.items()}
    assert {r.status_code for r in got.values()} == {422}
    errors = [r.json()["error"] for r in got.values()]
    assert errors[0]["field"] == errors[1]["field"] == "candidates[1].price"
    assert all("x-request-id" in r.headers for r in got.values())


def test_load_counts_user_cache_hits_and_new_users_miss(servers):
    (body,) = bench.bodies(20, users=1)
    for name, sent, want in (
        ("service", [body], "hit"),
        ("service", bench.NewUsers(body), "miss"),
        ("naive", [body], "miss"),
    ):
        rank(servers[name], body).raise_for_status()  # a first request: the user is cached
        r = asyncio.run(Load(servers[name], sent, concurrency=2).run(0.5))
        assert r.failed == 0 and r.total >= 2, r.summary()
        assert r.user_cache == {want: r.total}, (name, want, r.summary())


def test_new_users_are_one_body_under_new_user_ids():
    (body,) = bench.bodies(5, users=1)
    users = bench.NewUsers(body)
    a, b = (
        request.decode(users[i], request.Rules.from_settings(Settings())).req for i in (0, 12345)
    )
    assert a.user_id != b.user_id
    assert a.user_features == b.user_features and a.candidates == b.candidates


def result(**naive) -> dict:
    def run(per_s: float, hit: float, p99: float, **extra) -> dict:
        return {
            "requests": 100,
            "by_status": {"200": 100},
            "accepted_per_s": per_s,
            "accepted_p50_ms": 6.0,
            "accepted_p99_ms": p99,
            "candidates_per_s": per_s * 500,
            "hit_rate": hit,
            **extra,
        }

    def path(per_s: float, hit: float, **extra) -> dict:
        levels = {
            "1": run(per_s / 2, hit, 10.0, server_cores=0.9),
            "8": run(per_s, hit, 140.0, server_cores=1.5, **extra),
        }
        return {
            "driver": "wrk",
            "levels": levels,
            "peak": {"concurrency": 8, **levels["8"]},
            "under_bound": {"concurrency": 1, **levels["1"]},
            "half": {"rate": per_s / 2, **run(per_s / 2, hit, 12.0, p999_ms=20.0)},
            "overload": {
                "rate": per_s * 2,
                **run(per_s * 0.9, hit, 30.0, by_status={"200": 90, "503": 10}),
                "refused_fast_share": 0.8,
            },
        }

    return {
        "model": "esmm/v1",
        "cpus": 2,
        "candidates": 500,
        "behaviour_ids": [300, 700],
        "concurrency_levels": [1, 8],
        "seconds": 5.0,
        "ceiling": {
            "rows": 500,
            "item_scorer_ms": 2.5,
            "candidates_per_s": 200_000.0,
            "user_tower_ms": 0.09,
            "full_graph_ms": 40.0,
        },
        "parsing": {
            "body_bytes": 77_000,
            "decode_ms": 0.9,
            "msgspec_untyped_ms": 0.6,
            "orjson_untyped_ms": 0.6,
            "encode_ms": 3.2,
            "response_ms": 0.25,
            "ids_body_bytes": 4_000,
            "ids_decode_ms": 0.07,
            "ids_encode_ms": 0.9,
            "stored_user_bytes": 5_000,
            "stored_user_ms": 0.5,
        },
        "service_hit": path(100.0, 1.0),
        "service_miss": path(80.0, 0.0),
        "service_ids_hit": path(300.0, 1.0),
        "workers": 2,
        "service_ids_hit_workers": path(360.0, 1.0),
        "service_ids_miss": path(250.0, 0.0),
        "naive": path(25.0, 0.0, **naive),
    }


def test_report_has_a_row_per_path_and_names_failures():
    md = bench_report.markdown(result())
    assert "| item scorer in-process, one thread (raw ceiling) | 200,000 | 2.50 ms per run |" in md
    assert (
        "| /rank by features, user cache hit | 50,000 (8) | 140.0 | 25,000 (1) "
        "| 100%, 6.0 / 12.0 / 20.0 | 90%, 30.0 | 1.50 | 100% |" in md
    )
    assert "load from wrk (a C load generator" in md
    # the id path's shape, step by step, against its best step
    assert "| callers (closed loop) | 1 | 8 |" in md and "| of the best step | 50% | 100% |" in md
    assert "| the same, RANKER_WORKERS=2 | 180,000 (8) |" in md
    assert "By ids with a cache hit, RANKER_WORKERS=2, step by step" in md
    assert "| server cores | 0.90 | 1.50 |" in md
    # refusals at twice the peak are reported as such, not as failures
    assert "Refused at 2x the peak" in md and "10 of 100" in md
    assert "80% of the 503s answered within 10 ms" in md
    assert "| /rank by features, user cache miss | 40,000 (8) |" in md
    assert "| naive: full graph per request, tiled, no cache/batching | 12,500 (8) |" in md
    assert "| /rank by ids (both stores), user cache hit | 150,000 (8) |" in md
    assert "25% of the raw ceiling by features and 75% by ids" in md
    assert "4.0x the naive baseline" in md
    assert "| request body | 77 kB | 4.0 kB |" in md and "Failed" not in md
    assert "| encode into embedding rows (hash; by ids: the table's rows gathered) | 3.20 ms" in md
    md = bench_report.markdown(result(requests=10, by_status={"200": 7, "503": 3}))
    assert "Failed requests: naive: full graph" in md and "3 of 10 not 200" in md


def test_readme_block_is_rewritten_in_place_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    head, tail = "# Title\n\nbefore\n", "\nafter <!-- bench:training -->\n"
    readme.write_text(f"{head}<!-- bench:serving -->\nold table\n<!-- /bench:serving -->{tail}")
    assert bench_report.rewrite_readme(readme, "new\n")
    want = f"{head}<!-- bench:serving -->\nnew\n<!-- /bench:serving -->{tail}"
    assert readme.read_text() == want
    assert bench_report.rewrite_readme(readme, "new\n") and readme.read_text() == want
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not bench_report.rewrite_readme(plain, "new\n") and plain.read_text() == "no markers\n"
    assert not bench_report.rewrite_readme(tmp_path / "missing.md", "new\n")


def test_a_short_benchmark_runs_end_to_end(exported, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:serving -->\n<!-- /bench:serving -->\n")
    out = tmp_path / "bench"
    args = ["--model-dir", str(exported.parent), "--candidates", "50", "--seconds", "0.2"]
    args += ["--driver", "python"]  # wrk runs whole seconds; its own test is below
    args += ["--workers", "1"]  # no second run of the id path (test_workers.py tests workers)
    bench.main([*args, "--levels", "1,2", "--out", str(out), "--readme", str(readme)])
    r = json.loads((out / "serve.json").read_text())
    for key, hits in (
        ("service_hit", 1.0),
        ("service_miss", 0.0),
        ("service_ids_hit", 1.0),
        ("service_ids_miss", 0.0),
        ("naive", 0.0),
    ):
        for run in [*r[key]["levels"].values(), r[key]["half"]]:
            assert run["requests"] > 0 and run["by_status"].keys() == {"200"}, (key, run)
            assert run["hit_rate"] == hits, key
    assert r["ceiling"]["rows"] == 50 and r["ceiling"]["candidates_per_s"] > 0
    md = (out / "serve.md").read_text()
    assert "service_ids_hit_workers" not in r and "RANKER_WORKERS" not in md
    assert readme.read_text() == f"<!-- bench:serving -->\n{md}<!-- /bench:serving -->\n"


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed (make test installs it)")
def test_wrk_closed_and_open_loop_report_what_the_caller_saw_and_the_server_used(exported):
    """wrk against the real service: every answer counted by status, the open loop's achieved
    rate near its offered one, percentiles in order, and the server's cores measured."""
    (body,) = bench.bodies(50, users=1)
    bodies = wrk.Bodies([body])
    svc = ServiceProcess(model_dir=exported, access_log=False).wait_ready()
    args = argparse.Namespace(seconds=1, candidates=50)
    try:
        closed = bench._wrk_step(svc.url, bodies, args, 2, pid=svc.proc.pid)
        opened = wrk.run(svc.url, bodies, 2, 16, rate=40.0, server_pid=svc.proc.pid)
    finally:
        svc.stop()
        bodies.close()
    # what the server counted during the step: one user, so every answer a cache hit but the
    # first of each connection at most; no refusal
    assert 1.0 - 2 / closed["requests"] <= closed["hit_rate"] <= 1.0, closed
    assert closed["refused_fast_share"] is None, closed
    for r in (closed, opened):
        assert r["by_status"] == {"200": r["requests"]} and r["requests"] > 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"], r
        assert r["server_cores"] > 0, r
    assert closed["offered_per_s"] is None and opened["offered_per_s"] == 40.0
    assert 20 < opened["achieved_per_s"] < 60, opened  # Poisson: about the offered rate
    with pytest.raises(ValueError, match="one line"):
        wrk.Bodies([b"{\n}"])


def test_refusals_within_10_ms_are_read_from_the_servers_histogram():
    """The share of a step's 503s answered within 10 ms: the growth of the latency histogram's
    10 ms bucket over that of its count, for /rank's 503s only, whatever the labels' order."""
    count = 'ranker_request_seconds_count{path="/rank",status="503"}'
    fast = 'ranker_request_seconds_bucket{le="0.01",path="/rank",status="503"}'
    slow = 'ranker_request_seconds_bucket{le="0.02",path="/rank",status="503"}'
    other = 'ranker_request_seconds_bucket{le="0.01",path="/rank",status="200"}'
    before = {count: 5.0, fast: 5.0, slow: 5.0, other: 10.0}
    after = {count: 25.0, fast: 20.0, slow: 25.0, other: 500.0}
    after['ranker_user_cache_total{outcome="hit",tier="local"}'] = 3.0  # new since before
    after['ranker_user_cache_total{tier="redis",outcome="hit"}'] = 2.0
    after['ranker_user_cache_total{outcome="miss",tier="redis"}'] = 7.0
    assert bench._delta(before, after, "ranker_request_seconds_count", **bench.REFUSED) == 20.0
    assert (
        bench._delta(before, after, "ranker_request_seconds_bucket", le="0.01", **bench.REFUSED)
        == 15.0
    )
    assert bench._delta(before, after, "ranker_user_cache_total", outcome="hit") == 5.0


def test_the_stage_table_has_a_column_per_step_and_a_row_per_stage():
    from loadtest import stages

    step = {
        "callers": 4,
        "rate": None,
        "candidates_per_s": 200_000.0,
        "p50_ms": 9.0,
        "p99_ms": 15.0,
        "p999_ms": 21.0,
        "server_cores": 1.37,
        "runs_per_s": 285.0,
        "rows_per_run": 755.0,
        "run_ms": 2.35,
        "wait_ms": 1.18,
        "loop_lag_ms": None,
    }
    md = stages.markdown([step, {**step, "callers": 16}, {**step, "callers": 50, "rate": 250.0}])
    assert "| callers (closed loop), or open loop at requests/s | 4 | 16 | 250/s |" in md
    assert "| p50 / p99 / p999 ms | 9.0 / 15.0 / 21.0 | 9.0 / 15.0 / 21.0 |" in md
    assert "| wait for a run ms (mean) | 1.18 | 1.18 | 1.18 |" in md
    assert "| event-loop lag ms (mean) | - | - | - |" in md
