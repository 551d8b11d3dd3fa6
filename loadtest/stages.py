"""Where a request's time goes under concurrency: the service by ids (both stores, a cache hit,
500 candidates) driven by wrk closed loop at each number of callers, and for each step what the
service itself measured during it (the deltas of its /metrics): item-scorer runs per second, rows
per run, run time, the time a request's rows waited for their run, the event loop's lag, and the
server's cores. `docs/benchmarks.md` ("Latency at the tail") reads these tables.

    python -m loadtest.stages --model-dir models [--levels 1,2,4,8,16,32] [--seconds 8]
        [--rates 120,240]       # open-loop steps too, Poisson arrivals at these requests/s
        [--set KEY=VALUE ...]   # RANKER_ settings of the served process, e.g. intra_op_threads=2

Needs wrk (`make bench` installs it) and redis-server.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx

from loadtest import bench, wrk
from loadtest.parts import RedisServer, ServiceProcess, scrape
from loadtest.traffic import Traffic
from service.engine import Engine
from service.model_folder import newest_version
from training.cli import prog as cli_prog

STAGES = ("ranker_batch_run_seconds", "ranker_batch_wait_seconds", "ranker_event_loop_lag_seconds")


def _mean_ms(a: dict, b: dict, name: str) -> float | None:
    n = b.get(f"{name}_count", 0.0) - a.get(f"{name}_count", 0.0)
    return None if n <= 0 else (b[f"{name}_sum"] - a.get(f"{name}_sum", 0.0)) / n * 1e3


def step(
    url: str, bodies: wrk.Bodies, seconds: float, callers: int, pid: int, rate: float | None = None
) -> dict:
    """One wrk run: closed loop with `callers`, or open loop (Poisson arrivals) at `rate`
    requests/s over as many connections as bench's open-loop steps use."""
    if rate is not None:
        callers = bench.open_connections(rate)
    before = scrape(url)
    r = wrk.run(url, bodies, seconds, callers, rate, server_pid=pid)
    after = scrape(url)
    runs = after.get("ranker_batch_run_seconds_count", 0) - before.get(
        "ranker_batch_run_seconds_count", 0
    )
    rows = after.get("ranker_batch_rows_sum", 0) - before.get("ranker_batch_rows_sum", 0)
    return {
        "callers": callers,
        "rate": rate,
        "candidates_per_s": r["accepted_per_s"] * 500,
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "p999_ms": r["p999_ms"],
        "server_cores": r["server_cores"],
        "runs_per_s": runs / r["seconds"],
        "rows_per_run": rows / runs if runs else None,
        "run_ms": _mean_ms(before, after, STAGES[0]),
        "wait_ms": _mean_ms(before, after, STAGES[1]),
        "loop_lag_ms": _mean_ms(before, after, STAGES[2]),
        "by_status": r["by_status"],
    }


def markdown(steps: list[dict]) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    rows = [
        ("candidates/s", "candidates_per_s", ",.0f"),
        ("p50 / p99 / p999 ms", None, None),
        ("server cores", "server_cores", ".2f"),
        ("scorer runs/s", "runs_per_s", ".0f"),
        ("rows per run", "rows_per_run", ".0f"),
        ("run ms (mean)", "run_ms", ".2f"),
        ("wait for a run ms (mean)", "wait_ms", ".2f"),
        ("event-loop lag ms (mean)", "loop_lag_ms", ".2f"),
    ]
    lines = [
        "| callers (closed loop), or open loop at requests/s | "
        + " | ".join(str(s["callers"]) if s["rate"] is None else f"{s['rate']:g}/s" for s in steps)
        + " |",
        "|---|" + "---|" * len(steps),
    ]
    for label, key, fmt in rows:
        if key is None:
            cells = [f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} / {s['p999_ms']:.1f}" for s in steps]
        else:
            cells = [f(s[key], fmt) for s in steps]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog=cli_prog("loadtest.stages"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument(
        "--levels", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8, 16, 32]
    )
    p.add_argument(
        "--rates",
        type=lambda t: [float(x) for x in t.split(",")],
        default=[],
        help="open-loop steps after the closed-loop ones, at these requests/s (Poisson arrivals)",
    )
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE, a RANKER_ setting")
    p.add_argument("--out", type=Path, default=Path("runs/stages.json"))
    args = p.parse_args(argv)
    if not wrk.available():
        raise SystemExit("wrk is not installed (make bench installs it)")
    settings = dict(kv.split("=", 1) for kv in args.set)
    folder = newest_version(args.model_dir)
    names = Engine(folder).contract.keys is not None
    hit = bench.bodies(500, names=names)
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as store:
        table = Path(tmp) / "items.npz"
        Traffic(seed=1, names=names).item_table().save(table)
        ids = bench.load_store(store.url, hit, 1 << 42, misses=0)
        sent = [bench.id_only(b, u) for b, u in zip(hit, ids, strict=True)]
        svc = ServiceProcess(
            model_dir=folder,
            access_log=False,
            reload_poll_s=0,
            item_table=table,
            user_store=store.url,
            **settings,
        ).wait_ready()
        bodies = wrk.Bodies(sent)
        try:
            for b in sent:  # every user cached: each step is a cache hit
                httpx.post(f"{svc.url}/rank", content=b, timeout=60).raise_for_status()
            wrk.run(svc.url, bodies, 2, 2)  # warm
            steps = [step(svc.url, bodies, args.seconds, c, svc.proc.pid) for c in args.levels]
            steps += [
                step(svc.url, bodies, args.seconds, 0, svc.proc.pid, rate) for rate in args.rates
            ]
        finally:
            bodies.close()
            svc.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "steps": steps}, indent=2))
    print(markdown(steps))


if __name__ == "__main__":
    main()
