"""make chaos: load while Redis is killed and restarted and the model is reloaded, then the count.

A real redis-server and the real service (`python -m service`) are started on free ports, with a
copy of the newest exported model as version `c000`, and no process cache, so that every
request asks Redis. Closed-loop load runs throughout; every
`--period` seconds one fault happens, in turn: Redis is SIGKILLed and restarted a second later,
or a new model version is copied in and `POST /admin/reload` swaps it in. At the end the service
gets SIGTERM and must exit 0. Prints requests by status, the accepted p99 and the fault counts;
writes OUT/chaos.json; exits 1 when any request failed.

    python -m loadtest.chaos --models models --seconds 60
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from loadtest.load import Load
from loadtest.parts import RedisServer, ServiceProcess, copy_version
from loadtest.traffic import Traffic, speaks_names
from service.model_folder import newest_version

TOKEN = "chaos-run-admin-token"


def bodies(n: int, seed: int = 0, names: bool = False) -> list[bytes]:
    """Full-feature bodies by field number or (names) by the generated spec's names."""
    traffic = Traffic(seed=seed, users=max(50, n // 4), names=names)
    return [json.dumps(traffic.request()).encode() for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--period", type=float, default=4.0, help="seconds between faults")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/chaos"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    source = newest_version(args.models)
    root = Path(tempfile.mkdtemp(prefix="chaos-models-"))
    copy_version(source, root, "c000")  # versions sort by name: zero-padded
    counts = {"redis_kills": 0, "reloads_ok": 0, "reloads_failed": 0}
    with RedisServer() as redis:
        svc = ServiceProcess(
            log_path=args.out / "service.log",
            model_dir=root,
            redis_url=redis.url,
            admin_token=TOKEN,
            reload_poll_s=0,
            cache_size=0,  # no process tier: every request asks Redis, the hardest case
        ).wait_ready()
        names = speaks_names(source)
        load = Load(svc.url, bodies(400, names=names), concurrency=args.concurrency).start()
        end, k = time.monotonic() + args.seconds, 0
        while time.monotonic() + args.period < end:
            time.sleep(args.period)
            k += 1
            if k % 2:
                redis.kill()
                counts["redis_kills"] += 1
                time.sleep(1.0)
                redis.start()
            else:
                copy_version(source, root, f"c{k:03d}")
                r = httpx.post(
                    f"{svc.url}/admin/reload",
                    headers={"authorization": f"Bearer {TOKEN}"},
                    timeout=60,
                )
                swapped = r.status_code == 200 and r.json()["status"] == "reloaded"
                counts["reloads_ok" if swapped else "reloads_failed"] += 1
        time.sleep(max(0.0, end - time.monotonic()))
        result = load.stop()
        redis_errors = svc.metric("ranker_redis_calls_total", op="get", outcome="error")
        exit_code = svc.stop()
    summary = {
        **result.summary(),
        **counts,
        "redis_get_errors": redis_errors,
        "service_exit_code": exit_code,
    }
    (args.out / "chaos.json").write_text(json.dumps(summary, indent=1))
    print(
        f"chaos: {summary['requests']} requests in {summary['seconds']} s, by status "
        f"{summary['by_status']}; accepted p99 {summary['accepted_p99_ms']:.1f} ms; "
        f"redis killed {counts['redis_kills']}x ({redis_errors:.0f} get errors absorbed), "
        f"reloads {counts['reloads_ok']} ok / {counts['reloads_failed']} failed, versions "
        f"answering {len(summary['versions'])}; service exit {exit_code}"
    )
    ok = result.failed == 0 and counts["reloads_failed"] == 0 and exit_code == 0
    if not ok:
        print("chaos: FAILED", summary["problems"], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
