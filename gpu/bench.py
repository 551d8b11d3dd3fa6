"""The GPU check's measurements (gpu/check.sh), all on one machine, load generator included:

1. the item scorer's raw ceiling in process: rows/s per way of running it (plain runs, I/O
   binding, CUDA graphs) at 1,000 to 65,536 rows per run, on the provider under test and on
   the CPU provider (one thread, as the service runs it);
2. /rank over real HTTP at 1,000 candidates per request: SERVERS `python -m service` processes
   (each its own port, ONNX session and batcher; the service has one process per port), driven
   by CLIENTS load processes (loadtest/load.py's closed-loop driver) that spread their
   connections over every server, at 1 and 3 requests in flight per server; full-feature
   requests and requests by item ids (RANKER_ITEM_TABLE, the table built from the same traffic),
   the users' representations cached (each body's user sent once before the clock starts);
   groups: CUDA, CUDA with RANKER_CUDA_GRAPH, and the same servers on the CPU provider;
3. a smoke of each group: /v1/model names the providers that really run (CUDAExecutionProvider
   first, for the CUDA groups), and the README's first request scores as the CPU group scores it.

    python gpu/bench.py --model MODEL_VERSION_FOLDER --provider cuda --out OUT [--seconds 6]

Writes OUT/bench.json, OUT/bench.md and OUT/servers.log (the last lines of each server's log);
the servers' whole logs and the item table go to WORK (--work, under /tmp), which does not come
back from a GPU machine. Run from the repository root with it on PYTHONPATH (check.sh does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson

from loadtest.load import Load
from loadtest.parts import ServiceProcess
from loadtest.traffic import Traffic, by_ids, speaks_names
from service.engine import Engine, ScorerOptions

REPO = Path(__file__).resolve().parents[1]
FIRST = REPO / "docs" / "first-request.json"
HIT_USERS = 8  # bodies per scenario; each user's representation cached before the clock starts
ROWS = (1000, 4096, 16384, 65536)


# ---- 1. the raw ceiling ---------------------------------------------------------------------
def ceiling(engine: Engine, folder: Path, sizes: tuple[int, ...], seconds: float) -> dict:
    """rows/s of engine.score at each size: the stored sample rows tiled, a user per 1,000 rows
    (as requests of 1,000 candidates batched together)."""
    s = np.load(folder / engine.manifest.samples)
    uid, uw = engine.contract.hash_side("user", s["user_ids"], s["user_vals"])
    iid, iw = engine.contract.hash_side("item", s["item_ids"], s["item_vals"])
    out = {}
    for n in sizes:
        users = -(-n // 1000)
        reprs = engine.user_repr(uid[np.arange(users) % len(uid)], uw[np.arange(users) % len(uw)])
        pick = np.arange(n) % len(iid)
        args = (reprs, np.arange(n, dtype=np.int64) // 1000, iid[pick], iw[pick])
        engine.score(*args)
        engine.score(*args)
        runs, t0 = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - t0 < seconds:
            engine.score(*args)
            runs += 1
        dt = (time.perf_counter() - t0) / runs
        out[str(n)] = {"ms_per_run": round(dt * 1e3, 3), "rows_per_s": round(n / dt)}
    return out


def ceilings(folder: Path, provider: str, seconds: float) -> dict:
    modes = {"plain": ScorerOptions(io_binding="off"), "io_binding": ScorerOptions(io_binding="on")}
    if provider == "cuda":
        modes["cuda_graph"] = ScorerOptions(io_binding="on", cuda_graph=True, max_rows=max(ROWS))
    out = {}
    for name, options in modes.items():
        e = Engine(folder, provider, scorer=options)
        e.warm()
        out[f"{provider}_{name}"] = {"mode": e.scorer_mode, **ceiling(e, folder, ROWS, seconds)}
        del e
    if provider != "cpu":
        e = Engine(folder, "cpu", scorer=ScorerOptions(io_binding="off"))
        out["cpu_plain_1_thread"] = {"mode": e.scorer_mode, **ceiling(e, folder, ROWS[:3], seconds)}
    return out


# ---- 2. /rank over HTTP ---------------------------------------------------------------------
def scenarios(candidates: int, names: bool = False) -> tuple[dict[str, list[bytes]], object]:
    t = Traffic(seed=1, names=names)
    full = [
        orjson.dumps({**t.request(user=u, candidates=candidates), "fusion": {"c": 0.2}})
        for u in range(HIT_USERS)
    ]
    ids = [orjson.dumps(by_ids(orjson.loads(b))) for b in full]
    return {"features": full, "ids": ids}, Traffic(seed=1, names=names).item_table()


def _client(urls: list[str], bodies: list[bytes], per_server: int, seconds: float) -> dict:
    """One load process: `per_server` connections to each of its servers, closed loop."""

    async def go():
        loads = [Load(u, bodies, concurrency=per_server, timeout_s=30) for u in urls]
        return await asyncio.gather(*(x.run(seconds) for x in loads))

    results = asyncio.run(go())
    return {
        "statuses": {str(k): v for r in results for k, v in r.statuses.items()},
        "latencies": [x for r in results for x in r.accepted_s],
        "seconds": max(r.seconds for r in results),
        "problems": [p for r in results for p in r.problems][:5],
    }


def load(urls: list[str], bodies, clients: int, per_server: int, seconds: float, cands) -> dict:
    groups = [urls[i::clients] for i in range(min(clients, len(urls)))]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(groups)) as pool:
        parts = pool.starmap(_client, [(g, bodies, per_server, seconds) for g in groups])
    statuses: dict[str, int] = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    lat = np.array([x for p in parts for x in p["latencies"]])
    secs = max(p["seconds"] for p in parts)
    ok = statuses.get("200", 0)
    return {
        "in_flight": per_server * len(urls),
        "requests": sum(statuses.values()),
        "by_status": statuses,
        "candidates_per_s": round(ok * cands / secs),
        "requests_per_s": round(ok / secs, 1),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2) if ok else None,
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2) if ok else None,
        "problems": [q for p in parts for q in p["problems"]][:5],
    }


def start(n: int, logs: Path, tag: str, **settings) -> list[ServiceProcess]:
    procs = [ServiceProcess(logs / f"{tag}-{i}.log", **settings) for i in range(n)]
    try:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda p: p.wait_ready(300), procs))
    except Exception:  # none left running to take the next group's GPU and cores
        for p in procs:
            p.stop()
        raise
    return procs


def scorer_mode(log: Path) -> str:
    """What the engine logged about the item scorer after warm-up (service/engine.py)."""
    lines = [ln for ln in log.read_text().splitlines() if "warm; item scorer:" in ln]
    return lines[-1].split("item scorer: ", 1)[1] if lines else "not logged"


def group(tag: str, args, bodies: dict, logs: Path, needs: str = "", **settings) -> dict:
    """One group of servers: started, smoked, loaded per scenario and level, stopped. `needs`:
    words the servers' item scorer mode must hold, else the load is not run (a setting the
    service did not apply would only repeat another group's figures)."""
    procs = start(args.servers, logs, tag, model_dir=args.model, **settings)
    try:
        urls = [p.url for p in procs]
        model = httpx.get(f"{urls[0]}/v1/model", timeout=10).json()
        first = httpx.post(f"{urls[0]}/rank", content=FIRST.read_bytes(), timeout=30)
        for u in urls:  # every user's representation cached on every server
            for b in bodies["features"]:
                httpx.post(f"{u}/rank", content=b, timeout=60).raise_for_status()
        out = {
            "settings": {k: str(v) for k, v in settings.items()},
            "providers": model.get("providers"),
            "scorer_mode": scorer_mode(logs / f"{tag}-0.log"),
            "first_request": first.json() if first.status_code == 200 else first.status_code,
            "load": {},
        }
        if needs not in out["scorer_mode"]:
            out["error"] = f"not loaded: its servers run {out['scorer_mode']!r}, not {needs}"
            return out
        for scenario, sent in bodies.items():
            for per_server in args.levels:
                key = f"{scenario}_x{per_server}"
                out["load"][key] = load(
                    urls, sent, args.clients, per_server, args.seconds, args.candidates
                )
                print(tag, key, {k: out["load"][key][k] for k in ("candidates_per_s", "p99_ms")})
        return out
    finally:
        for p in procs:
            p.stop()


def first_request_diff(a, b) -> float | None:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None
    want = {i["item_id"]: i for i in b["items"]}
    return max(
        abs(i[k] - want[i["item_id"]][k]) for i in a["items"] for k in ("pctr", "pcvr", "pctcvr")
    )


def gpu_name() -> str:
    try:
        q = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        return subprocess.run(q, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "none"


# ---- the report --------------------------------------------------------------------------------
def markdown(r: dict) -> str:
    lines = [
        f"GPU check {r['date']}, commit {r['commit']}: {r['gpu']}; {r['cpus']} cores, "
        f"{r['python']}, onnxruntime {r['onnxruntime']}; model {r['model']}. "
        f"`{r['command']}`",
        "",
        "Raw ceiling (in process, engine.score, rows/s):",
        "",
        "| scorer | " + " | ".join(f"{n:,} rows" for n in ROWS) + " |",
        "|---|" + "---|" * len(ROWS),
    ]
    for name, c in r["ceiling"].items():
        cells = [
            f"{c[str(n)]['rows_per_s']:,} ({c[str(n)]['ms_per_run']:.2f} ms)"
            if str(n) in c
            else "-"
            for n in ROWS
        ]
        lines.append(f"| {name} ({c['mode']}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"/rank over HTTP, {r['candidates']:,} candidates per request, {r['servers']} server "
        f"processes, {r['clients']} load processes, {r['seconds']} s per row, user cache hits:",
        "",
        "| group | requests | in flight | candidates/s | requests/s | p50 ms | p99 ms | not 200 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tag, g in r["http"].items():
        if "error" in g:
            lines.append(f"| {tag} | {g['error']} |  |  |  |  |  |  |")
            continue
        for key, x in g["load"].items():
            bad = {k: v for k, v in x["by_status"].items() if k != "200"}
            lines.append(
                f"| {tag} | {key.split('_x')[0]} | {x['in_flight']} | {x['candidates_per_s']:,} "
                f"| {x['requests_per_s']:,} | {x['p50_ms']} | {x['p99_ms']} | {bad or ''} |"
            )
    lines += ["", "Checks: " + "; ".join(f"{k}: {v}" for k, v in r["checks"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    cpus = os.cpu_count() or 2
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model version folder")
    p.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=6.0, help="of load per row of the table")
    p.add_argument("--servers", type=int, default=max(1, cpus // 2))
    p.add_argument("--clients", type=int, default=max(1, cpus // 4))
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3])
    p.add_argument("--max-batch-rows", type=int, default=16384, help="of the CUDA groups")
    p.add_argument("--skip", default="", help="comma-separated: ceiling, cuda_graph, cpu")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-bench"))
    args = p.parse_args(argv)
    skip = set(args.skip.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    import onnxruntime as ort

    r: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        or "?",
        "gpu": gpu_name(),
        "cpus": cpus,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "model": f"{args.model.parent.name}/{args.model.name}",
        "command": " ".join(["python", "gpu/bench.py", *sys.argv[1:]]),
        "provider": args.provider,
        "candidates": args.candidates,
        "servers": args.servers,
        "clients": args.clients,
        "seconds": args.seconds,
        "ceiling": {},
        "http": {},
        "checks": {},
    }
    t0 = time.perf_counter()
    if "ceiling" not in skip:
        r["ceiling"] = ceilings(args.model, args.provider, min(args.seconds / 6, 1.0))
        print("ceiling", json.dumps(r["ceiling"]), f"{time.perf_counter() - t0:.0f} s")
    bodies, table = scenarios(args.candidates, speaks_names(args.model))
    table.save(args.work / "items.npz")
    common = {
        "item_table": args.work / "items.npz",
        "access_log": False,
        "reload_poll_s": 0,
        "max_queued_rows": 1 << 17,
    }
    gpu = {"providers": args.provider, "max_batch_rows": args.max_batch_rows}
    groups = {args.provider: gpu}
    if args.provider == "cuda" and "cuda_graph" not in skip:
        groups["cuda_graph"] = {**gpu, "cuda_graph": True, "needs": "CUDA graphs"}
    if args.provider != "cpu" and "cpu" not in skip:
        groups["cpu"] = {"providers": "cpu"}
    for tag, settings in groups.items():
        try:
            r["http"][tag] = group(tag, args, bodies, logs, **common, **settings)
        except Exception as e:  # one group failing must not cost the others' figures
            r["http"][tag] = {"error": f"{type(e).__name__}: {e}"}
        print(tag, f"{time.perf_counter() - t0:.0f} s")
    g = r["http"].get(args.provider, {})
    providers = g.get("providers") or ["none"]
    want = "CUDAExecutionProvider" if args.provider == "cuda" else "CPUExecutionProvider"
    r["checks"]["v1_model_runs_" + want] = providers[0] == want
    if "cpu" in r["http"] and "first_request" in g:
        d = first_request_diff(g["first_request"], r["http"]["cpu"].get("first_request"))
        r["checks"]["first_request_max_abs_diff_vs_cpu"] = d
    r["seconds_total"] = round(time.perf_counter() - t0, 1)
    (args.out / "bench.json").write_text(json.dumps(r, indent=2))
    (args.out / "bench.md").write_text(markdown(r))
    with (args.out / "servers.log").open("w") as f:  # the last lines of each server's log
        for log in sorted(logs.glob("*.log")):
            f.write(f"==> {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]) + "\n")
    print(markdown(r))


if __name__ == "__main__":
    main()
