"""Locust against a running ranker. Traffic comes from loadtest/traffic.py.

    make loadtest                      closed loop: USERS recommenders calling back to back
    make loadtest MODE=step            step load: +STEP_USERS users every STEP_SECONDS, to find
                                       the saturation point (summarize.py plots it)
    make loadtest MODE=open RATE=60    open loop: Poisson arrivals at RATE requests/s whatever
                                       the latency (closed loops understate tail latency)
The compose `loadtest` profile runs this file with Locust's web UI on :8089.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import gevent
import orjson
from locust import FastHttpUser, LoadTestShape, constant, events, task
from traffic import Traffic  # beside this file: locust puts its folder on sys.path

MODE = os.environ.get("LOADTEST_MODE", "closed")
SEED = int(os.environ.get("LOADTEST_SEED", "0"))
CANDIDATES = {"sent": 0, "ok": 0}


def bucket(n: int) -> str:
    return "<=100" if n <= 100 else "<=300" if n <= 300 else "<=600" if n <= 600 else ">600"


class _Ranker(FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        self.traffic = Traffic(seed=SEED * 1000 + random.randrange(1000))

    def send(self) -> None:
        body = self.traffic.request()
        n = len(body["candidates"])
        CANDIDATES["sent"] += n
        with self.client.post(
            "/rank",
            data=orjson.dumps(body),
            name=f"/rank ({bucket(n)})",
            headers={"content-type": "application/json"},
            catch_response=True,
        ) as r:
            if r.status_code == 200:
                CANDIDATES["ok"] += n
            else:
                r.failure(f"status {r.status_code}: {r.text[:200]}")


class Recommender(_Ranker):
    """Closed loop: the next request leaves when the previous answer arrives."""

    wait_time = constant(0)

    @task
    def rank(self) -> None:
        self.send()


class OpenLoopRecommender(_Ranker):
    """Open loop: this user's share of a Poisson stream of LOADTEST_RATE requests/s; requests
    go out on schedule, each on its own greenlet, however slow the answers are."""

    wait_time = constant(0)
    concurrency = 64

    @task
    def arrivals(self) -> None:
        users = max(self.environment.runner.user_count, 1)
        rate = float(os.environ.get("LOADTEST_RATE", "20")) / users
        gevent.sleep(random.expovariate(rate))
        gevent.spawn(self.send)


if MODE == "step":

    class StepLoad(LoadTestShape):
        """+STEP_USERS closed-loop users every STEP_SECONDS for STEPS steps."""

        users = int(os.environ.get("LOADTEST_STEP_USERS", "2"))
        seconds = int(os.environ.get("LOADTEST_STEP_SECONDS", "20"))
        steps = int(os.environ.get("LOADTEST_STEPS", "8"))

        def tick(self):
            k = int(self.get_run_time() // self.seconds)
            if k >= self.steps:
                return None
            return (k + 1) * self.users, (k + 1) * self.users


@events.quitting.add_listener
def _write_candidates(environment, **_) -> None:
    out = Path(os.environ.get("LOADTEST_RESULTS", "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates.json").write_text(json.dumps(CANDIDATES))
