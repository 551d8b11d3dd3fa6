"""make overload: find the saturation point, then offer twice that and see what the service does.

1. Saturation: closed-loop load at 1, 2, 4, ... workers (each step `--step-seconds`) until the
   accepted requests per second stop growing by 5%; the best rate seen is the saturation point.
2. Overload: open-loop Poisson arrivals at `--factor` (default 2) times that rate for
   `--seconds`. A demanding user expects: accepted requests keep their p99 within their deadline
   (RANKER_DEFAULT_TIMEOUT_MS), the rest are refused fast (503 + Retry-After), nothing else is a
   5xx, and memory stays flat (the service's RSS from its /metrics, sampled every second).
   "Fast" for a refusal: its p99 within a quarter of the deadline, so a client still has time
   to try elsewhere.

3. Concurrency without think time: `--clients` closed-loop clients (default 32), each request of
   `--client-candidates` (500), for `--client-seconds`. Queued, their work fits the deadline, so
   a demanding user expects every request served: refusing and retrying at once only burns the
   cores (the old 8,192-row bound refused half of them here).

Writes OUT/overload.{json,md}; exits 1 when a claim above does not hold.

    python -m loadtest.overload --models models
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from pathlib import Path

from loadtest.chaos import bodies
from loadtest.load import Load
from loadtest.parts import ServiceProcess
from loadtest.traffic import Traffic, speaks_names
from service.model_folder import newest_version


def saturation(url: str, data: list[bytes], step_s: float) -> tuple[float, list[dict]]:
    steps, best, workers = [], 0.0, 1
    while workers <= 64:
        r = asyncio.run(Load(url, data, concurrency=workers, seed=workers).run(step_s))
        rate = r.statuses.get(200, 0) / r.seconds
        steps.append({"workers": workers, "accepted_per_s": round(rate, 1), "p99_ms": r.pct(99)})
        print(f"  {workers:>3} workers: {rate:7.1f} req/s, p99 {r.pct(99) or 0:.0f} ms")
        if rate < best * 1.05:
            break
        best, workers = max(best, rate), workers * 2
    return best, steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--step-seconds", type=float, default=8.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--timeout-ms", type=int, default=1000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--client-candidates", type=int, default=500)
    p.add_argument("--client-seconds", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=Path("runs/overload"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = speaks_names(newest_version(args.models))
    data = bodies(600, names=names)
    svc = ServiceProcess(
        log_path=args.out / "service.log",
        model_dir=newest_version(args.models),
        reload_poll_s=0,
        default_timeout_ms=args.timeout_ms,
        access_log="false",
    ).wait_ready()
    try:
        print("saturation (closed loop):")
        sat, steps = saturation(svc.url, data, args.step_seconds)
        rate = args.factor * sat
        print(f"overload: open loop at {rate:.1f} req/s ({args.factor}x) for {args.seconds} s")
        rss: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                rss.append(svc.metric("process_resident_memory_bytes") / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        r = asyncio.run(Load(svc.url, data, rate=rate, seed=1).run(args.seconds))
        stop.set()
        sampler.join()
        print(f"concurrency: {args.clients} closed-loop clients of {args.client_candidates}")
        traffic = Traffic(seed=2, users=200, names=names)
        big = [
            json.dumps(traffic.request(candidates=args.client_candidates)).encode()
            for _ in range(64)
        ]
        c = asyncio.run(Load(svc.url, big, concurrency=args.clients).run(args.client_seconds))
    finally:
        exit_code = svc.stop()
    other_5xx = sum(
        v for k, v in r.statuses.items() if isinstance(k, int) and k >= 500 and k != 503
    )
    third = max(1, len(rss) // 3)
    out = {
        "saturation_req_per_s": round(sat, 1),
        "saturation_steps": steps,
        "offered_req_per_s": round(rate, 1),
        "deadline_ms": args.timeout_ms,
        **r.summary(),
        "refused": r.statuses.get(503, 0),
        "other_5xx": other_5xx,
        "rss_mb_first_third": round(max(rss[:third]), 1) if rss else None,
        "rss_mb_last_third": round(max(rss[-third:]), 1) if rss else None,
        "service_exit_code": exit_code,
        "concurrency": {
            "clients": args.clients,
            "candidates": args.client_candidates,
            **c.summary(),
            "refused": c.statuses.get(503, 0),
        },
    }
    cc = out["concurrency"]
    p99 = out["accepted_p99_ms"]
    checks = {
        "accepted p99 within the deadline": p99 is not None and p99 <= args.timeout_ms,
        "no 5xx but refusals": other_5xx == 0 and r.statuses.get("conn-error", 0) == 0,
        "refusals are fast (p99 within a quarter of the deadline)": (out["refused_p99_ms"] or 0)
        <= args.timeout_ms / 4,
        "memory flat (last third within 10% of first)": bool(rss)
        and out["rss_mb_last_third"] <= 1.1 * out["rss_mb_first_third"],
        f"{args.clients} closed-loop clients all served within the deadline": cc["refused"] == 0
        and (cc["accepted_p99_ms"] or 0) <= args.timeout_ms,
    }
    out["checks"] = checks
    (args.out / "overload.json").write_text(json.dumps(out, indent=1))
    md = [
        "| saturation | offered | accepted/s | accepted p50 | accepted p99 (deadline) "
        "| refused (503) | refused p50 / p99 | other 5xx | RSS first/last third |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {sat:.1f} req/s | {rate:.1f} req/s | {out['accepted_per_s']} "
        f"| {out['accepted_p50_ms']:.0f} ms | {p99:.0f} ms ({args.timeout_ms} ms) "
        f"| {out['refused']} of {out['requests']} "
        f"| {out['refused_p50_ms'] or 0:.0f} / {out['refused_p99_ms'] or 0:.0f} ms "
        f"| {other_5xx} | {out['rss_mb_first_third']} / {out['rss_mb_last_third']} MB |",
    ]
    md += [
        "",
        f"{args.clients} closed-loop clients of {args.client_candidates} candidates: "
        f"{cc['accepted_per_s']} accepted/s, {cc['refused']} refused of {cc['requests']}, "
        f"p50 {cc['accepted_p50_ms'] or 0:.0f} ms, p99 {cc['accepted_p99_ms'] or 0:.0f} ms.",
    ]
    (args.out / "overload.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
