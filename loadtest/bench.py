"""make bench: the item scorer's raw ceiling, POST /rank over real HTTP (user cache hit and miss;
full-feature requests and requests by item ids, the items' features from an item table built
from the same traffic), and the naive baseline (loadtest/naive.py: full graph per request, user
rows tiled, no cache, no batching) on the same HTTP stack, all in one run. Writes
OUT/serve.{json,md} and rewrites the README's block between `<!-- bench:serving -->` markers
(loadtest/bench_report.py renders the figures).

    python -m loadtest.bench --model-dir models [--candidates 500] [--seconds 8] [--out runs/bench]

Servers are real processes (`python -m service`, `python -m loadtest.naive`) started and loaded by
loadtest/load.py; bodies come from loadtest/traffic.py. The load driver runs on the same
machine, so on 2 cores it takes CPU from the server: figures are end to end on one box.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import msgspec
import numpy as np
import orjson

from loadtest import bench_report, wrk
from loadtest.load import Load
from loadtest.parts import ServiceProcess, scrape, total
from loadtest.traffic import NAMES, POPULATION, Traffic, by_ids, raw_features
from service import fusion, request
from service.config import Settings
from service.encoding import RequestEncoder
from service.engine import Engine
from service.model_folder import newest_version
from service.response import order_of, ranked
from training.cli import prog as cli_prog

HIT_USERS = 4  # users sent again and again: after the first request, every one a cache hit
FUSION = {"c": 0.2}  # price in the fusion, so its cost is in every figure


class NewUsers(Sequence[bytes]):
    """`body` again and again under a new user id each time: every request a cache miss. Each
    body is built when indexed (a splice of bytes), so there are as many as a run sends."""

    def __init__(self, body: bytes, first_id: int = 1 << 40):
        rest = orjson.loads(body)
        del rest["user_id"]
        self.rest, self.first_id = orjson.dumps(rest)[1:], first_id  # `"user_features":...}`

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, i):  # type: ignore[override]
        return b'{"user_id":%d,' % (self.first_id + i) + self.rest


def bodies(n: int, users: int = HIT_USERS, seed: int = 1, names: bool = False) -> list[bytes]:
    """Full-feature bodies of `users` users, by Ali-CCP field or (names) the spec's names."""
    traffic = Traffic(seed=seed, names=names)
    return [
        orjson.dumps({**traffic.request(user=u, candidates=n), "fusion": FUSION})
        for u in range(users)
    ]


# stored users of the id-only miss run, per second of a step (each step its own): more than the
# path answers, at most 24,000 in all (5 kB each in Redis)
STORE_MISS_USERS_PER_S, STORE_MISS_USERS = 600, 24_000


def id_only(body: bytes, user_id: int) -> bytes:
    """The request as a recommender sends it with both stores: ids, context, fusion."""
    b = by_ids(orjson.loads(body))
    del b["user_features"]
    return orjson.dumps({**b, "user_id": user_id})


class StoredUsers(Sequence[bytes]):
    """An id-only body under `count` stored user ids in turn: with `count` above what a run
    sends, every request a user cache miss whose features come from the store."""

    def __init__(self, body: bytes, first_id: int, count: int):
        rest = orjson.loads(body)
        del rest["user_id"]
        self.rest, self.first_id, self.count = orjson.dumps(rest)[1:], first_id, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):  # type: ignore[override]
        return b'{"user_id":%d,' % (self.first_id + i) + self.rest


def load_store(url: str, hit: list[bytes], miss_first: int, misses: int) -> list[int]:
    """The hit users under their 101 ids, and `misses` more (the first hit user's
    features under ids from `miss_first`), written as `ranker users load` writes them."""
    import redis

    from features import users

    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    ids = []
    key = None
    for body in hit:
        feats = raw_features(orjson.loads(body)["user_features"])
        key = "101" if "101" in feats else NAMES["101"]  # by field or by the spec's name
        uid = feats[key][0][0]
        ids.append(uid)
        d, blob = users.encode(feats)
        pipe.hset(users.key(uid), mapping={"d": d, "f": blob})
    base = raw_features(orjson.loads(hit[0])["user_features"])
    for k in range(misses):
        d, blob = users.encode({**base, key: ([miss_first + k], [1.0])})
        pipe.hset(users.key(miss_first + k), mapping={"d": d, "f": blob})
    pipe.execute()
    client.close()
    return ids


def behaviour_ids(body: bytes) -> int:
    feats = orjson.loads(body)["user_features"]
    lists = [*POPULATION, *(NAMES[f] for f in POPULATION)]  # by field or by name
    return sum(len(feats[f]["ids"]) for f in lists if f in feats)  # the behaviour lists


def _time(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call: one untimed call, then as many as fit in `seconds` (at least one)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def in_process(
    engine: Engine, body: bytes, rule: request.Rules, seconds: float, table=None
) -> dict:
    """The raw ceiling and each step of a request's Python work, timed on one body. Encoded by
    the service's own decoder and encoder: the ceiling scores exactly what /rank would."""
    r = request.decode(body, rule)
    encoder = RequestEncoder(engine.contract)
    rows = encoder.encode(r.req, r.price)
    n = r.rows
    user = engine.user_repr(rows.user_ids, rows.user_weights)
    index = np.zeros(n, np.int64)
    scores = engine.score(user, index, rows.item_ids, rows.item_weights)
    fused = fusion.score(r.fusion, scores.pctr, scores.pcvr, r.prices())
    item_ids = r.req.item_keys()
    tiled = np.repeat(rows.user_ids, n, 0), np.repeat(rows.user_weights, n, 0)
    t_item = _time(lambda: engine.score(user, index, rows.item_ids, rows.item_weights), seconds)
    return {
        "ceiling": {
            "rows": n,
            "item_scorer_ms": t_item * 1e3,
            "candidates_per_s": n / t_item,
            "user_tower_ms": _time(
                lambda: engine.user_repr(rows.user_ids, rows.user_weights), seconds / 4
            )
            * 1e3,
            "full_graph_ms": _time(
                lambda: engine.score_full(*tiled, rows.item_ids, rows.item_weights), seconds / 2
            )
            * 1e3,
        },
        "parsing": {
            "body_bytes": len(body),
            # the hot path: typed, strict, every request rule (service/request.py)
            "decode_ms": _time(lambda: request.decode(body, rule), seconds / 4) * 1e3,
            # parsing alone, for scale: no types, no rules
            "msgspec_untyped_ms": _time(lambda: msgspec.json.decode(body), seconds / 4) * 1e3,
            "orjson_untyped_ms": _time(lambda: orjson.loads(body), seconds / 4) * 1e3,
            "encode_ms": _time(lambda: encoder.encode(r.req, r.price), seconds / 4) * 1e3,
            **_by_ids(engine, body, rule, seconds, table),
            "response_ms": _time(
                lambda: msgspec.json.encode(
                    ranked(
                        engine.version,
                        True,
                        r.fusion,
                        item_ids,
                        scores,
                        fused,
                        order_of(fused, None),
                    )
                ),
                seconds / 4,
            )
            * 1e3,
        },
    }


def rules(model_dir: Path) -> request.Rules:
    """The service's rules with both stores present: the in-process timings give the encoder its
    item table and a stored user themselves."""
    settings = request.Rules.from_settings(Settings(model_dir=model_dir))
    return dataclasses.replace(settings, item_table=True, user_store=True)


def _by_ids(engine: Engine, body: bytes, rule: request.Rules, seconds: float, table) -> dict:
    """Decoding and encoding the same request by item ids, the items from the table."""
    if table is None:
        return {}
    from features import users
    from service.encoding import StoredItems

    ids_body = id_only(body, 1)
    r = request.decode(ids_body, rule)
    encoder = RequestEncoder(engine.contract, StoredItems(table, engine.contract))
    _, blob = users.encode(raw_features(orjson.loads(body)["user_features"]))
    return {
        "ids_body_bytes": len(ids_body),
        "ids_decode_ms": _time(lambda: request.decode(ids_body, rule), seconds / 4) * 1e3,
        "ids_encode_ms": _time(lambda: encoder.encode(r.req, r.price), seconds / 4) * 1e3,
        # a cache miss's stored user: its record decoded and checked, then encoded
        "stored_user_bytes": len(blob),
        "stored_user_ms": _time(lambda: encoder.encode_stored_user(users.decode(blob)), seconds / 4)
        * 1e3,
    }


class Shifted(Sequence[bytes]):
    """`base[offset:offset + span]`: each load of a sweep gets bodies no earlier load sent, so
    a miss run stays a miss run."""

    def __init__(self, base: Sequence[bytes], offset: int, span: int):
        self.base, self.offset, self.span = base, offset, min(span, len(base) - offset)

    def __len__(self) -> int:
        return self.span

    def __getitem__(self, i):  # type: ignore[override]
        return self.base[self.offset + i]


# each path's figure: the most candidates/s at which p99 stays under this
P99_BOUND_MS = bench_report.P99_BOUND_MS


def _figures(r, candidates: int) -> dict:
    return {
        **r.summary(),
        "candidates_per_s": r.statuses.get(200, 0) / r.seconds * candidates,
        "hit_rate": r.user_cache.get("hit", 0) / max(r.statuses.get(200, 0), 1),
    }


# bodies a miss run writes for wrk per second of load at 500 candidates (more for fewer): more
# than any path answers here, so every request is a user no earlier request named
MISS_BODIES_PER_S = 1500
MISS_FILE_BYTES = 64 << 20  # at most this much of bodies per step (1,000 full-feature ones)
OVERLOAD = bench_report.OVERLOAD


def open_connections(rate: float) -> int:
    """Connections of an open-loop step: enough that a fifth of a second of arrivals can be in
    flight at once (so arrivals do not wait for answers), each waiting 0.2 s on average between
    its requests (far under the server's keep-alive timeout)."""
    return int(min(256, max(16, rate * 0.2)))


FAST_REFUSAL_S = "0.01"  # issue 24's aim: a refusal answered within 10 ms
LATENCY = "ranker_request_seconds"
REFUSED = {"path": "/rank", "status": "503"}


def _delta(before: dict[str, float], after: dict[str, float], name: str, **labels: str) -> float:
    """What the samples of metric `name` with `labels` (parts.total) grew by between two
    scrapes of /metrics."""
    return total(after, name, **labels) - total(before, name, **labels)


def _wrk_step(url, bodies, args, connections, rate=None, pid=None, offset=0) -> dict:
    """One wrk run, with what the server counted during it: its cache hits, its refusals
    (503) and the share of them it answered within FAST_REFUSAL_S by its own clock (its
    latency histogram: from the request's arrival at the service to its answer)."""
    before = scrape(url)
    r = wrk.run(url, bodies, args.seconds, connections, rate, pid, offset=offset)
    after = scrape(url)
    answered = max(r["by_status"].get("200", 0), 1)
    refused = _delta(before, after, f"{LATENCY}_count", **REFUSED)
    fast = _delta(before, after, f"{LATENCY}_bucket", le=FAST_REFUSAL_S, **REFUSED)
    return {
        **r,
        "accepted_p50_ms": r["p50_ms"],
        "accepted_p99_ms": r["p99_ms"],
        "candidates_per_s": r["accepted_per_s"] * args.candidates,
        "hit_rate": min(
            1.0, _delta(before, after, "ranker_user_cache_total", outcome="hit") / answered
        ),
        "refused_fast_share": fast / refused if refused else None,
    }


def sweep(
    url: str, sent: Sequence[bytes], args: argparse.Namespace, miss: bool, pid: int | None = None
) -> dict:
    """Closed loop at each number of callers of args.levels (peak, and the best rate whose p99
    stays under P99_BOUND_MS), then open loop at half the peak's requests/s (the p99 at half
    load) and at OVERLOAD times it (goodput when offered more than it can do). With wrk (the
    default where installed) every figure is what wrk saw, with the server's cores; without it,
    the Python driver (loadtest/load.py) runs the same steps, cores not measured."""
    driver = "python" if args.driver == "python" or not wrk.available() else "wrk"
    step = (_wrk_step_of if driver == "wrk" else _python_step_of)(url, sent, args, miss, pid)
    runs = {c: step(k, c) for k, c in enumerate(args.levels)}
    peak_c = max(runs, key=lambda c: runs[c]["candidates_per_s"])
    rate = runs[peak_c]["accepted_per_s"]
    half = step(len(args.levels), None, rate / 2)
    over = step(len(args.levels) + 1, None, rate * OVERLOAD)
    under = [
        c
        for c, run in runs.items()
        if run["accepted_p99_ms"] is not None and run["accepted_p99_ms"] <= P99_BOUND_MS
    ]
    best_c = max(under, key=lambda c: runs[c]["candidates_per_s"]) if under else None
    return {
        "driver": driver,
        "levels": {str(c): v for c, v in runs.items()},
        "peak": {"concurrency": peak_c, **runs[peak_c]},
        "under_bound": None if best_c is None else {"concurrency": best_c, **runs[best_c]},
        "half": {"rate": rate / 2, **half},
        "overload": {"rate": rate * OVERLOAD, **over},
    }


def _wrk_step_of(url: str, sent: Sequence[bytes], args, miss: bool, pid: int | None):
    """step(k, callers, rate): the k-th step of a sweep, closed loop with `callers` or open
    loop at `rate`, run by wrk."""
    steps = len(args.levels) + 2
    per_step = int(wrk.duration(args.seconds) * MISS_BODIES_PER_S * 500 / args.candidates)
    per_step = min(per_step, MISS_FILE_BYTES // len(sent[0]))  # full-feature bodies are large
    span = min(per_step, len(sent) // steps) if miss else len(sent)

    def step(k: int, callers: int | None, rate: float | None = None) -> dict:
        # a miss run's step gets bodies of its own (wrk starts over at the end of its file: a
        # body sent twice is a hit, and counted as one)
        part = [sent[i] for i in range(k * span, (k + 1) * span)] if miss else sent
        bodies = wrk.Bodies(part)
        connections = callers if rate is None else open_connections(rate)
        try:
            return _wrk_step(url, bodies, args, connections, rate, pid, offset=k)
        finally:
            bodies.close()

    return step


def _python_step_of(url: str, sent: Sequence[bytes], args, miss: bool, pid: int | None):
    """step(k, callers, rate), run by the Python driver (64 connections when open loop)."""
    span = len(sent) // (len(args.levels) + 2) if miss else len(sent)

    def step(k: int, callers: int | None, rate: float | None = None) -> dict:
        bodies = Shifted(sent, k * span, span) if miss else sent
        load = Load(url, bodies, concurrency=64 if rate else callers, rate=rate)
        return _figures(asyncio.run(load.run(args.seconds)), args.candidates)

    return step


def over_http(
    name: str,
    folder: Path,
    scenarios: dict[str, Sequence[bytes]],
    args: argparse.Namespace,
    **settings,
) -> dict:
    """Each scenario's sweep against one server, started for them and stopped after."""
    module = {"service": "service", "naive": "loadtest.naive"}[name]
    # no access log: the naive server writes none either
    svc = ServiceProcess(
        args.out / f"{name}.log",
        module,
        model_dir=folder,
        access_log=False,
        reload_poll_s=0,
        **settings,
    )
    try:
        svc.wait_ready()
        # warm: the hit users' first requests, on fresh connections, several per worker (the
        # kernel picks the worker of each connection; each has its own process cache)
        repeat = 1 if settings.get("workers", 1) == 1 else 8 * settings["workers"]
        for scenario, sent in scenarios.items():
            for body in sent[:HIT_USERS] * repeat if scenario.endswith("hit") else ():
                httpx.post(f"{svc.url}/rank", content=body, timeout=60).raise_for_status()
        return {
            scenario: sweep(svc.url, sent, args, scenario.endswith("miss"), svc.proc.pid)
            for scenario, sent in scenarios.items()
        }
    finally:
        svc.stop()


def run(args: argparse.Namespace) -> dict:
    from loadtest.parts import RedisServer

    folder = newest_version(args.model_dir)
    engine = Engine(folder)
    names = engine.contract.keys is not None  # a spec's model: requests by its feature names
    hit = bodies(args.candidates, names=names)
    args.out.mkdir(parents=True, exist_ok=True)
    table = Traffic(seed=1, names=names).item_table()
    table.save(args.out / "items.npz")
    result = {
        "model": engine.version,
        "cpus": os.cpu_count(),
        "candidates": args.candidates,
        "behaviour_ids": [behaviour_ids(b) for b in hit],
        "concurrency_levels": list(args.levels),
        "seconds": args.seconds,
        **in_process(
            engine,
            hit[0],
            rules(folder),
            args.seconds,
            table,
        ),
    }
    with RedisServer() as store:
        miss_first = 1 << 42
        steps = len(args.levels) + 2
        misses = STORE_MISS_USERS_PER_S * wrk.duration(args.seconds) * steps
        misses = min(STORE_MISS_USERS, misses)
        user_ids = load_store(store.url, hit, miss_first, misses)
        scenarios = {
            "hit": hit,
            "miss": NewUsers(hit[0]),
            "ids_hit": [id_only(b, u) for b, u in zip(hit, user_ids, strict=True)],
            "ids_miss": StoredUsers(id_only(hit[0], 0), miss_first, misses),
        }
        service = over_http(
            "service",
            folder,
            scenarios,
            args,
            item_table=args.out / "items.npz",
            user_store=store.url,
        )
        if args.workers > 1:  # the id path again, on RANKER_WORKERS processes
            result["workers"] = args.workers
            result["service_ids_hit_workers"] = over_http(
                "service",
                folder,
                {"ids_hit": scenarios["ids_hit"]},
                args,
                item_table=args.out / "items.npz",
                user_store=store.url,
                workers=args.workers,
            )["ids_hit"]
    naive = over_http("naive", folder, {"hit": hit}, args)
    result |= {f"service_{k}": v for k, v in service.items()}
    result["naive"] = naive["hit"]
    if args.vs is not None:
        result["vs"] = versus(engine, hit[0], table, args)
    return result


VS_STAGES = bench_report.VS_STAGES


def versus(engine: Engine, body: bytes, table, args: argparse.Namespace) -> dict:
    """The same traffic's per-request Python work through this model and through the other
    route's (`--vs`: by field numbers against by names), timed in rounds that alternate the
    two, so both see the same machine; the median of the rounds per stage."""
    other = Engine(newest_version(args.vs))
    other_names = other.contract.keys is not None
    other_body = bodies(args.candidates, users=1, names=other_names)[0]
    other_table = Traffic(seed=1, names=other_names).item_table()
    rules_ = rules(args.model_dir)
    rounds: dict[str, list[dict]] = {"this": [], "vs": []}
    for _ in range(5):
        rounds["this"].append(in_process(engine, body, rules_, args.seconds / 5, table)["parsing"])
        rounds["vs"].append(
            in_process(other, other_body, rules_, args.seconds / 5, other_table)["parsing"]
        )
    label = {True: "by names (a spec's model)", False: "by field numbers (Ali-CCP model)"}
    out = {}
    for key, engine_ in (("this", engine), ("vs", other)):
        out[key] = {
            "model": engine_.version,
            "route": label[engine_.contract.keys is not None],
            **{k: float(np.median([r[k] for r in rounds[key]])) for k in VS_STAGES},
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog=cli_prog("loadtest.bench"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--seconds", type=float, default=5.0, help="of load per run")
    p.add_argument(
        "--levels",
        type=lambda t: tuple(int(x) for x in t.split(",")),
        default=(1, 2, 4, 8, 16, 32),
        help="concurrent clients of the closed-loop runs, e.g. 1,2,4,8",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="RANKER_WORKERS of the id path's second run (service/workers.py); 1: no second run",
    )
    p.add_argument(
        "--driver",
        choices=("wrk", "python"),
        default="wrk",
        help="the load generator: wrk (C, where installed; else python) or loadtest/load.py",
    )
    p.add_argument(
        "--vs",
        type=Path,
        help="a second model folder (the other route: Ali-CCP fields or a spec's names) whose "
        "in-process decode and encode of the same traffic are timed in this run, alternating",
    )
    p.add_argument(
        "--readme", type=Path, default=bench_report.README, help="whose bench block is rewritten"
    )
    args = p.parse_args(argv)
    r = run(args)
    md = bench_report.markdown(r)
    (args.out / "serve.json").write_text(json.dumps(r, indent=2))
    (args.out / "serve.md").write_text(md)
    if not bench_report.rewrite_readme(args.readme, md):
        print(f"(no bench:serving block in {args.readme}: not rewritten)")
    print(md)


if __name__ == "__main__":
    main()
