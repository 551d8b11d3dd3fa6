"""make compose-test, part two: the compose stack scaled to three rankers behind HAProxy, proven
for real (tests/compose/stack.sh brings it up with `--scale ranker=3 --profile metrics`).

1. Requests through the published port reach every replica (each replica's own /metrics; the
   published port itself refuses /metrics).
2. A user whose representation one replica computed is a Redis hit on the others, with the same
   scores.
3. Under steady load through the balancer, one replica is SIGKILLed: no request fails (HAProxy
   retries a refused or reset connection on another replica; /rank has no side effects).
4. Under the same load another replica gets SIGTERM and drains: HAProxy marks it down before the
   replica closes its socket, and no request to it needed a retry.
5. Both come back and rejoin the rotation; the load never saw a failure.
6. Prometheus (the `metrics` profile) returns a ranker metric for every replica through its API.

Also measured, not asserted (the machine is shared; figures go to the JSON given by --figures):
the balancer's added latency, requests/s through it with three replicas and with one, and the
latency of the requests that the kill and the drain overlapped.

The host reaches the replicas' own addresses on the compose network (rootful Podman's bridge):
that is how the test asks each replica directly.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

import httpx
import numpy as np
import orjson

from loadtest.load import Load, LoadResult
from loadtest.parts import metric

# The baked model reads the generator's named tables by their spec (data/.../tables/spec.yaml)
FEATURES = {"user_id": 5, "recent_categories": {"ids": [1, 2, 3], "weights": [3, 1, 1]}}
CANDIDATES = [
    {"item_id": f"i{k}", "features": {"item_id": 7 + k, "category": 3 + k % 5}, "price": 1.0 + k}
    for k in range(50)
]
# By ids, as a recommender calls it: a user of the image's embedded store and items of its
# item table (the generator's ids: users from 10,000,000, items from 140,000,000)
BY_IDS = {
    "user_id": 10_000_001,
    "item_ids": [140_000_000 + k for k in range(50)],
    "context_features": {"scene": "home"},
}
T0 = time.monotonic()


def say(*words) -> None:
    print(f"[replicas {time.monotonic() - T0:5.1f}s]", *words, flush=True)


def body(user: str) -> dict:
    return {"user_id": user, "user_features": FEATURES, "candidates": CANDIDATES}


# what the load sends: 500 users, each request answered with every candidate
BODIES = [orjson.dumps(body(f"load-{k}")) for k in range(500)]


def every_item(i: int, answer: dict) -> str | None:
    n = len(answer["items"])
    return None if n == len(CANDIDATES) else f"{n} items, not {len(CANDIDATES)}"


def load(url: str, clients: int) -> Load:
    """The project's load driver (loadtest/load.py): closed loop, keep-alive connections,
    every answer checked; cheap on the client side, so the rankers keep the CPU."""
    return Load(url, BODIES, concurrency=clients, check=every_item, timeout_s=30)


def failures(r: LoadResult) -> list[str]:
    statuses = {k: v for k, v in r.statuses.items() if k != 200}
    return ([f"statuses {statuses}"] if statuses else []) + r.problems


def fail(message: str) -> NoReturn:
    print(f"FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


# -- the stack as the engine and the balancer see it --------------------------------------------


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Stack:
    project: str
    url: str
    stats: str
    prometheus: str

    def replicas(self) -> dict[str, str]:
        """Running ranker containers: name -> address on the compose network."""
        out = {}
        project = f"label=io.podman.compose.project={self.project}"
        service = "label=com.docker.compose.service=ranker"
        names = podman("ps", "--filter", project, "--filter", service, "--format", "{{.Names}}")
        for name in names.split():
            ip = podman(
                "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name
            ).split()
            if ip:
                out[name] = ip[0]
        return out

    def rows(self) -> dict[str, dict]:
        """HAProxy's stats rows of the rankers backend, by name: BACKEND and each slot (ranker1,
        ranker2...)."""
        text = httpx.get(f"{self.stats}/stats;csv", timeout=5).text.lstrip("# ")
        return {
            r["svname"]: r for r in csv.DictReader(io.StringIO(text)) if r["pxname"] == "rankers"
        }

    def slots(self) -> dict[str, dict]:
        return {name: row for name, row in self.rows().items() if name != "BACKEND"}

    def servers(self) -> dict[str, dict]:
        """The slots DNS filled, by address."""
        rows = {}
        for row in self.slots().values():
            addr = row.get("addr") or ""
            if addr and not addr.startswith("0.0.0.0"):
                rows[addr.rsplit(":", 1)[0]] = row
        return rows

    def backend(self) -> dict:
        return self.rows()["BACKEND"]

    def wait_up(self, ips: set[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.servers()
            if all((rows.get(ip) or {}).get("status") == "UP" for ip in ips):
                return
            time.sleep(0.25)
        fail(f"HAProxy never had {sorted(ips)} UP: {self.servers()}")


def in_rotation(row: dict | None) -> bool:
    """HAProxy sends new requests to this server: UP, or UP and failing checks ("UP 1/2")."""
    return row is not None and row["status"].split()[0] == "UP"


def replica_metric(ip: str, sample: tuple[str, dict[str, str]]) -> float:
    """One sample, (name, labels), of a replica's own /metrics (0 when absent)."""
    name, labels = sample
    return metric(f"http://{ip}:8000", name, **labels)


def promql(sample: tuple[str, dict[str, str]], **more: str) -> str:
    """The PromQL selector of a (name, labels) sample, with `more` labels added."""
    name, labels = sample
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in {**more, **labels}.items()) + "}"


RANK_200 = ("ranker_request_seconds_count", {"path": "/rank", "status": "200"})
REDIS_HIT = ("ranker_user_cache_total", {"outcome": "hit", "tier": "redis"})
REDIS_SET = ("ranker_redis_calls_total", {"op": "set", "outcome": "ok"})


def quantile_ms(seconds: list[float], q: float) -> float:
    return round(1e3 * float(np.percentile(seconds, q)), 1) if seconds else float("nan")


def throughput(url: str, clients: int, seconds: float) -> dict:
    r = asyncio.run(load(url, clients).run(seconds))
    if failures(r):
        fail(f"requests failed during the throughput run: {failures(r)[:3]}")
    return {
        "requests_per_s": round(r.statuses[200] / r.seconds, 1),
        "p50_ms": quantile_ms(r.accepted_s, 50),
        "p99_ms": quantile_ms(r.accepted_s, 99),
    }


# -- the checks ---------------------------------------------------------------------------------


def every_replica_reached(stack: Stack, reps: dict[str, str]) -> dict[str, float]:
    before = {name: replica_metric(ip, RANK_200) for name, ip in reps.items()}
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for k in range(30):
            r = http.post("/rank", json=body(f"spread-{k}"))
            if r.status_code != 200:
                fail(f"/rank through the balancer: {r.status_code} {r.text[:300]}")
    served = {name: replica_metric(ip, RANK_200) - before[name] for name, ip in reps.items()}
    if not all(n > 0 for n in served.values()):
        fail(f"30 requests through the balancer did not reach every replica: {served}")
    say(f"every replica reached: /rank answers per replica {served}")
    for path in ("/metrics", "/%6Detrics", "//metrics"):  # as uvicorn would decode it
        code = httpx.get(f"{stack.url}{path}", timeout=5).status_code
        if code != 403:
            fail(f"{path} through the published port answered {code}, not 403")
    return served


def one_request_id(stack: Stack) -> None:
    """A caller's sane id reaches the ranker unchanged; an id the ranker would replace is
    replaced by HAProxy first, so its log line and the ranker's answer carry the same id."""
    url = f"{stack.url}/rank"
    r = httpx.post(url, json=body("ids"), headers={"x-request-id": "trace-42.a"}, timeout=30)
    if r.headers["x-request-id"] != "trace-42.a":
        fail(f"a sane request id came back as {r.headers['x-request-id']}")
    r = httpx.post(url, json=body("ids"), headers={"x-request-id": "not sane!"}, timeout=30)
    rid = r.headers["x-request-id"]
    project = f"label=io.podman.compose.project={stack.project}"
    (lb,) = podman(
        "ps", "-q", "--filter", project, "--filter", "label=com.docker.compose.service=lb"
    ).split()
    time.sleep(0.5)  # HAProxy writes its line when the response ends
    logs = subprocess.run(["podman", "logs", lb], capture_output=True, text=True)
    if "{" + rid + "}" not in logs.stdout + logs.stderr:
        fail(f"HAProxy's log has no line with the id the ranker answered with ({rid})")
    say(f"one request id: a sane one kept, a bad one replaced by HAProxy ({rid}) in both logs")


def by_ids_through_the_balancer(stack: Stack) -> None:
    """An id-only request through HAProxy: the user from the store, every item from the table."""
    r = httpx.post(f"{stack.url}/rank", json=BY_IDS, timeout=30)
    if r.status_code != 200:
        fail(f"an id-only request answered {r.status_code}: {r.text[:300]}")
    answer = r.json()
    if answer["user"] != "store" or answer.get("unknown_items"):
        fail(f"by ids: user {answer['user']}, unknown items {answer.get('unknown_items')}")
    if len(answer["items"]) != len(BY_IDS["item_ids"]):
        fail(f"by ids: {len(answer['items'])} items answered")
    say(f"by ids through HAProxy: {len(answer['items'])} items, the user from the store")


def redis_hit_crosses_replicas(reps: dict[str, str]) -> None:
    user = f"cross-{random.getrandbits(48):x}"
    (a, ip_a), *others = sorted(reps.items())
    set_before = replica_metric(ip_a, REDIS_SET)
    first = httpx.post(f"http://{ip_a}:8000/rank", json=body(user), timeout=30).json()
    if first["user_cache"] != "miss":
        fail(f"a new user was not a miss on {a}: {first['user_cache']}")
    scores = {i["item_id"]: i["score"] for i in first["items"]}
    # A writes the user to Redis after it answers: wait for the write to land before asking B
    deadline = time.monotonic() + 10
    while replica_metric(ip_a, REDIS_SET) < set_before + 1:
        if time.monotonic() > deadline:
            fail(f"{a} never wrote the user to Redis")
        time.sleep(0.05)
    for name, ip in others:
        hits = replica_metric(ip, REDIS_HIT)
        got = httpx.post(f"http://{ip}:8000/rank", json=body(user), timeout=30).json()
        if got["user_cache"] != "hit" or replica_metric(ip, REDIS_HIT) != hits + 1:
            fail(f"{name} did not answer {a}'s user from Redis: {got['user_cache']}")
        diff = max(abs(i["score"] - scores[i["item_id"]]) for i in got["items"])
        if diff > 1e-6:
            fail(f"{name}'s scores from the cached user differ from {a}'s by {diff}")
    say(f"Redis hit across replicas: {a} computed the user, {len(others)} others hit, same scores")


def refused_or_gone(ip: str) -> bool:
    """True once nothing accepts a connection on the replica's port: refused, or no answer in a
    second (the container is gone; a live one on this bridge answers in microseconds)."""
    try:
        socket.create_connection((ip, 8000), timeout=1.0).close()
        return False
    except OSError:
        return True


def counters(row: dict) -> dict[str, int]:
    """A server's or backend's HAProxy counters: times chosen (lbtot), retries, redispatches."""
    return {k: int(row[k] or 0) for k in ("lbtot", "wretr", "wredis")}


def delta(after: dict, before: dict) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


def kill_and_drain(stack: Stack, reps: dict[str, str], clients: int) -> dict:
    (killed, killed_ip), (drained, drained_ip), _ = sorted(reps.items())
    running = load(stack.url, clients).start()
    time.sleep(3)
    at_kill = counters(stack.backend())
    t_kill = time.perf_counter()  # the load driver's clock
    podman("kill", "--signal", "KILL", killed)
    say(f"SIGKILL {killed}")
    time.sleep(4)
    kill = delta(counters(stack.backend()), at_kill)  # the kill's own, before the drain
    if kill["wretr"] + kill["wredis"] == 0:
        fail("the SIGKILL cost no retry: the failover path was not exercised")
    row = stack.servers()[drained_ip]
    slot = row["svname"]  # its address may leave the row once DNS drops the replica
    before, at_out = counters(row), None
    t_term = time.monotonic()
    stop = subprocess.Popen(
        ["podman", "stop", "-t", "30", drained],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    say(f"SIGTERM {drained} (drains)")
    t_out = t_closed = None
    while stop.poll() is None or t_closed is None:
        now = time.monotonic()
        row = stack.slots()[slot]
        if t_out is None and not in_rotation(row):
            t_out, at_out = now, counters(row)
        if t_closed is None and refused_or_gone(drained_ip):
            t_closed = now
        if now - t_term > 40:
            fail(f"{drained} did not stop within 40 s")
        time.sleep(0.05)
    if stop.returncode != 0:
        fail(f"podman stop {drained}: {stop.stderr.read() if stop.stderr else ''}")
    if t_out is None or at_out is None or not t_out < t_closed:
        fail(f"{drained} stopped accepting before HAProxy took it out")
    say(
        f"{drained}: out of HAProxy's rotation {t_out - t_term:.2f} s after SIGTERM, "
        f"socket closed {t_closed - t_term:.2f} s after"
    )
    draining = delta(at_out, before)
    if draining["lbtot"] == 0:
        fail(f"{drained} got no request between SIGTERM and leaving the rotation")
    retried = delta(counters(stack.slots()[slot]), before)
    if retried["wretr"] or retried["wredis"]:
        fail(f"requests to the draining {drained} needed retries: {retried}")
    time.sleep(2)
    podman("start", killed, drained)
    say(f"restarted {killed} and {drained}")
    new = stack.replicas()
    stack.wait_up(set(new.values()))
    say("all three back in HAProxy's rotation")
    time.sleep(3)
    r = running.stop()
    if failures(r):
        fail(f"requests failed under the kill and drain, of {r.total}: {failures(r)[:5]}")
    # the requests in flight at any time within 2 s of the kill
    kill_window = [
        s
        for t, s in zip(r.accepted_at, r.accepted_s, strict=True)
        if t <= t_kill + 2 and t + s >= t_kill
    ]
    figures = {
        "requests": r.total,
        "seconds": round(r.seconds, 1),
        "kill_retries": kill["wretr"],
        "kill_redispatches": kill["wredis"],
        "kill_window_2s_max_ms": round(1e3 * max(kill_window, default=float("nan")), 1),
        "drain_out_s": round(t_out - t_term, 2),
        "drain_closed_s": round(t_closed - t_term, 2),
        "drain_requests_before_out": draining["lbtot"],
        "p50_ms": quantile_ms(r.accepted_s, 50),
        "p99_ms": quantile_ms(r.accepted_s, 99),
    }
    say(
        f"kill and drain under load: {r.total} requests in {r.seconds:.1f} s, none failed; "
        "the kill cost "
        f"{kill['wretr']} retries and {kill['wredis']} redispatches; the slowest request in "
        f"flight within 2 s of it took {figures['kill_window_2s_max_ms']} ms; the draining "
        f"replica took {draining['lbtot']} requests before leaving the rotation, none retried"
    )
    served = {name: replica_metric(ip, RANK_200) for name, ip in new.items()}
    if not all(n > 0 for n in served.values()):
        fail(f"the restarted replicas got no requests after rejoining: {served}")
    say(f"the restarted replicas serve again: /rank answers since their restart {served}")
    return figures


def prometheus_sees_every_replica(stack: Stack, reps: dict[str, str]) -> None:
    query = f"{stack.prometheus}/api/v1/query"
    want = {f"{ip}:8000" for ip in reps.values()}
    deadline, seen = time.monotonic() + 90, set()
    while time.monotonic() < deadline:
        r = httpx.get(query, params={"query": promql(RANK_200, job="ranker")}, timeout=5)
        result = r.json()["data"]["result"]
        seen = {s["metric"]["instance"] for s in result if float(s["value"][1]) > 0}
        if want <= seen:
            break
        time.sleep(2)
    else:
        fail(f"Prometheus has the ranker metric for {sorted(seen)}, not all of {sorted(want)}")
    lb = httpx.get(query, params={"query": 'up{job="haproxy"}'}, timeout=5).json()["data"]
    if not lb["result"] or lb["result"][0]["value"][1] != "1":
        fail(f"Prometheus does not scrape HAProxy: {lb}")
    say(
        f"Prometheus's API returns {promql(RANK_200)} for all {len(want)} replicas, "
        "and HAProxy is up"
    )


def measure(stack: Stack, reps: dict[str, str], clients: int, seconds: float) -> dict:
    """Figures, not checks: the balancer's cost on a sequential request, and requests/s through
    it with every replica in rotation and then with one (the others stopped by SIGTERM)."""
    ip = next(iter(reps.values()))

    def sequential(url: str) -> float:
        return throughput(url, 1, 4)["p50_ms"]

    figures = {
        "sequential_p50_ms_direct": sequential(f"http://{ip}:8000"),
        "sequential_p50_ms_through_haproxy": sequential(stack.url),
        f"replicas_{len(reps)}": throughput(stack.url, clients, seconds),
    }
    keep, *rest = sorted(reps)
    for name in rest:
        podman("stop", "-t", "30", name)
    stack.wait_up({reps[keep]})
    figures["replicas_1"] = throughput(stack.url, clients, seconds)
    podman("start", *rest)
    stack.wait_up(set(stack.replicas().values()))
    say(f"figures: {json.dumps(figures)}")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", required=True, help="the compose project's name")
    ap.add_argument("--url", required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--measure-seconds", type=float, default=10)
    ap.add_argument("--figures", help="write the measured figures here (JSON)")
    args = ap.parse_args()
    stack = Stack(args.project, args.url, args.stats, args.prometheus)
    reps = stack.replicas()
    if len(reps) != args.replicas:
        fail(f"{len(reps)} ranker containers running, not {args.replicas}: {reps}")
    stack.wait_up(set(reps.values()))
    say(f"{len(reps)} replicas UP in HAProxy: {reps}")
    every_replica_reached(stack, reps)
    one_request_id(stack)
    by_ids_through_the_balancer(stack)
    redis_hit_crosses_replicas(reps)
    failover = kill_and_drain(stack, reps, args.clients)
    reps = stack.replicas()
    prometheus_sees_every_replica(stack, reps)
    figures = {"failover": failover, **measure(stack, reps, args.clients, args.measure_seconds)}
    if args.figures:
        with open(args.figures, "w") as f:
            json.dump(figures, f, indent=2)
    print("replicas: passed", flush=True)


if __name__ == "__main__":
    main()
