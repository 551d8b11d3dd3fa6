"""make bench: the item scorer's raw ceiling, POST /rank over real HTTP (cache hit and miss),
and the naive baseline (full graph per request, user features tiled, no cache, no batching) on
the same HTTP stack, all in one run. Writes runs/bench/serve.{json,md} and the README table.

    python -m service.bench [--model-dir models] [--candidates 500] [--seconds 8]

The load generator runs on the same machine (an asyncio client sending pre-serialised bodies),
so on 2 cores it takes CPU from the server: figures are end-to-end on one box.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from service import wire
from service.encoding import RequestEncoder
from service.engine import Engine, newest_version

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"(<!-- bench:serving -->\n).*?(<!-- /bench:serving -->)", re.S)
BEHAVIOUR = {"109_14": 60, "110_14": 220, "127_14": 150, "150_14": 120}  # ids per list


def realistic_request(contract, rng: np.random.Generator, n: int, user_id: int) -> dict:
    """One user with hundreds of behaviour ids (counts as weights) and n candidates."""
    user = {}
    for f in contract.side_fields("user"):
        k = min(BEHAVIOUR.get(f.name, 1), f.max_len)
        ids = rng.integers(0, 1 << 40, size=k).tolist()
        user[f.name] = (
            {"ids": ids, "weights": rng.integers(1, 20, size=k).astype(float).tolist()}
            if k > 1
            else ids[0]
        )
    candidates = []
    for i in range(n):
        feats = {}
        for f in contract.side_fields("item"):
            k = min(3, f.max_len)
            feats[f.name] = (
                rng.integers(0, 1 << 40, size=k).tolist()
                if k > 1
                else int(rng.integers(0, 1 << 40))
            )
        candidates.append({"item_id": i, "features": feats, "price": float(rng.uniform(1, 100))})
    return {
        "user_id": user_id,
        "user_features": user,
        "candidates": candidates,
        "fusion": {"c": 0.2},
    }


def ceiling(engine: Engine, n: int, seconds: float) -> dict:
    # Encoded by the service's own encoder: the ceiling scores exactly what /rank would.
    req = wire.decode(
        json.dumps(realistic_request(engine.contract, np.random.default_rng(0), n, 0)).encode()
    )
    encoder = RequestEncoder(engine.contract)
    iid, iw = encoder.encode_items(req)
    u_ids, u_vals = encoder.encode_user(req)
    uid, uw = engine.contract.hash_side("user", u_ids[None], u_vals[None])
    r = engine.user_repr(uid, uw)
    idx = np.zeros(n, np.int64)
    t_user = _time(lambda: engine.user_repr(uid, uw), seconds / 4)
    t_item = _time(lambda: engine.score(r, idx, iid, iw), seconds)
    tiled = np.repeat(uid, n, 0), np.repeat(uw, n, 0)
    t_full = _time(lambda: engine.score_full(*tiled, iid, iw), seconds / 2)
    return {
        "rows": n,
        "item_scorer_ms": t_item * 1e3,
        "candidates_per_s": n / t_item,
        "user_tower_ms": t_user * 1e3,
        "full_graph_ms": t_full * 1e3,
    }


def parsing(contract, n: int, seconds: float) -> dict:
    """Decoding + validating a request body and serialising a response, per request."""
    import orjson

    from service import schemas

    body = json.dumps(realistic_request(contract, np.random.default_rng(2), n, 7)).encode()
    items = [
        {"item_id": i, "pctr": 0.1, "pcvr": 0.2, "pctcvr": 0.02, "score": 0.02} for i in range(n)
    ]
    return {
        "body_bytes": len(body),
        "pydantic_strict_ms": _time(lambda: schemas.RankRequest.model_validate_json(body), seconds)
        * 1e3,
        "msgspec_ms": _time(lambda: wire.decode(body), seconds) * 1e3,
        "orjson_response_ms": _time(lambda: orjson.dumps({"items": items}), seconds) * 1e3,
    }


def _time(fn, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, naive: bool) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "RANKER_MODEL_DIR": str(model_dir), "RANKER_PORT": str(port)}
    code = (
        "import uvicorn; from service.__main__ import load_settings; "
        "from service.main import create_app; from service.naive import NaiveRanker; "
        "from service.ranking import Ranker; s = load_settings(); "
        f"uvicorn.run(create_app(s, {'NaiveRanker' if naive else 'Ranker'}), host=s.host, "
        "port=s.port, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready")


async def load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    hits = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(1 << 62))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal hits
        while time.perf_counter() < deadline:
            body = bodies[next(counter) % len(bodies)]
            t0 = time.perf_counter()
            r = await client.post(
                f"{url}/rank", content=body, headers={"content-type": "application/json"}
            )
            latencies.append(time.perf_counter() - t0)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            # a byte search, not a parse: the client shares the server's 2 cores
            hits += r.status_code == 200 and b'"user_cache":"hit"' in r.content

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {
        "requests": len(lat),
        "requests_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "statuses": statuses,
        "cache_hit_rate": hits / max(len(lat), 1),
    }


def run(model_dir: Path, n: int, seconds: float, concurrency: int) -> dict:
    folder = newest_version(model_dir)
    engine = Engine(folder)
    result = {
        "model": engine.version,
        "cpus": os.cpu_count(),
        "candidates": n,
        "concurrency": concurrency,
        "ceiling": ceiling(engine, n, seconds),
        "parsing": parsing(engine.contract, n, seconds / 4),
    }
    rng = np.random.default_rng(1)
    hit_bodies = [
        json.dumps(realistic_request(engine.contract, rng, n, u)).encode() for u in range(4)
    ]
    miss_bodies = [
        json.dumps({**json.loads(hit_bodies[0]), "user_id": 10_000 + i}).encode()
        for i in range(20_000)
    ]
    for name, naive in (("service", False), ("naive", True)):
        proc, url = start_server(folder, naive)
        try:
            for b in hit_bodies:  # warm the cache for the hit scenario
                httpx.post(f"{url}/rank", content=b, headers={"content-type": "application/json"})
            scenarios = {"hit": hit_bodies} if naive else {"hit": hit_bodies, "miss": miss_bodies}
            for scen, bodies in scenarios.items():
                r = asyncio.run(load(url, bodies, concurrency, seconds))
                r["candidates_per_s"] = r["requests_per_s"] * n
                result[f"{name}_{scen}"] = r
        finally:
            proc.terminate()
            proc.wait(30)
    return result


def markdown(r: dict) -> str:
    c = r["ceiling"]
    rows = [
        (
            "item scorer in-process (raw ceiling)",
            f"{c['candidates_per_s']:,.0f}",
            f"{c['item_scorer_ms']:.2f} ms per run",
            "",
            "",
        )
    ]
    for key, label in (
        ("service_hit", "/rank, user cache hit"),
        ("service_miss", "/rank, user cache miss"),
        ("naive_hit", "naive: full graph per request, tiled, no cache/batching"),
    ):
        x = r[key]
        rows.append(
            (
                label,
                f"{x['candidates_per_s']:,.0f}",
                f"{x['requests_per_s']:,.1f}",
                f"{x['p50_ms']:.1f}",
                f"{x['p99_ms']:.1f}",
            )
        )
    lines = [
        f"{r['candidates']} candidates per request, a user with "
        f"{sum(BEHAVIOUR.values())} behaviour ids, {r['concurrency']} concurrent clients "
        f"on the same {r['cpus']}-core machine, model {r['model']}. User tower "
        f"{c['user_tower_ms']:.2f} ms, full graph at {r['candidates']} rows "
        f"{c['full_graph_ms']:.2f} ms.",
        "",
        "| path | candidates/s | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    p = r["parsing"]
    lines += [
        "",
        f"Per request of {p['body_bytes'] / 1e3:.0f} kB: validating with pydantic "
        f"(strict, from bytes) {p['pydantic_strict_ms']:.2f} ms, with msgspec (the hot "
        f"path) {p['msgspec_ms']:.2f} ms; the response with orjson "
        f"{p['orjson_response_ms']:.2f} ms; the item scorer's run "
        f"{c['item_scorer_ms']:.2f} ms.",
    ]
    s, nv = r["service_hit"], r["naive_hit"]
    lines += [
        "",
        f"End to end (cache hit) is {s['candidates_per_s'] / c['candidates_per_s']:.0%} "
        f"of the raw ceiling and {s['candidates_per_s'] / nv['candidates_per_s']:.1f}x "
        "the naive baseline.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m service.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    a = p.parse_args(argv)
    r = run(a.model_dir, a.candidates, a.seconds, a.concurrency)
    md = markdown(r)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "serve.json").write_text(json.dumps(r, indent=2))
    (a.out / "serve.md").write_text(md)
    text = README.read_text()
    if MARKER.search(text):
        README.write_text(MARKER.sub(lambda m: m.group(1) + md + m.group(2), text))
    print(md)


if __name__ == "__main__":
    main()
