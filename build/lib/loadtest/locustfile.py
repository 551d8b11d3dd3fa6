"""Locust against a running ranker. Traffic comes from loadtest/traffic.py.

By ids by default, as a recommender calls a ranker (`Recommender`, `OpenLoopRecommender`: the
user by id, the candidates by item id; the service needs its item table and user store, as
`make run` serves the default model); `BY=features` sends every feature instead
(`FeatureRecommender`, `OpenLoopFeatureRecommender`). The features speak the served model's
language: the spec's names where /v1/model shows a spec, else Ali-CCP's field numbers.

    make loadtest                      closed loop: USERS recommenders calling back to back
    make loadtest MODE=step            step load: +STEP_USERS users every STEP_SECONDS, to find
                                       the saturation point (summarize.py plots it)
    make loadtest MODE=open RATE=60    open loop: Poisson arrivals at RATE requests/s whatever
                                       the latency (closed loops understate tail latency)
The compose `loadtest` profile runs this file with Locust's web UI on :8089.

Every request is recorded as it completes (Locust's request event) in
$LOADTEST_RESULTS/requests.csv (default results/, beside this file under make): its end since
the test started, latency, outcome and candidates; a step-load run also writes its schedule to
steps.json. summarize.py computes the whole run's and each step's figures from them. Recording
assumes one Locust process (as make and the compose profile run it), not master and workers.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import gevent
import orjson
from locust import FastHttpUser, LoadTestShape, constant, events, task
from summarize import SAMPLES, SCHEDULE, SampleWriter  # beside this file, as traffic.py
from traffic import FIELD_BASE, Traffic, by_ids  # beside this file: locust puts it on sys.path

MODE = os.environ.get("LOADTEST_MODE", "closed")
SEED = int(os.environ.get("LOADTEST_SEED", "0"))
RESULTS = Path(os.environ.get("LOADTEST_RESULTS", "results"))


def bucket(n: int) -> str:
    return "<=100" if n <= 100 else "<=300" if n <= 300 else "<=600" if n <= 600 else ">600"


# The default model's stores (make train): 5000 users, 7500 items; ids past these are unknown.
STORED_USERS = int(os.environ.get("LOADTEST_USERS", "5000"))
STORED_ITEMS = int(os.environ.get("LOADTEST_ITEMS", "7500"))


class _Ranker(FastHttpUser):
    abstract = True
    ids = True  # id-only requests

    def on_start(self) -> None:
        model = self.client.get("/v1/model").json()
        names = "spec" in model.get("features", {})
        self.traffic = Traffic(
            seed=SEED * 1000 + random.randrange(1000),
            users=STORED_USERS,
            items=STORED_ITEMS,
            names=names,
        )

    def send(self) -> None:
        body = self.traffic.request()
        n = len(body["candidates"])
        if self.ids:
            body = by_ids(body)
            del body["user_features"]  # the user store's
            body["user_id"] += int(FIELD_BASE["101"])  # the id the store keys it by
        with self.client.post(
            "/rank",
            data=orjson.dumps(body),
            name=f"/rank ({bucket(n)})",
            headers={"content-type": "application/json"},
            catch_response=True,
            context={"candidates": n},
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")


class Recommender(_Ranker):
    """Closed loop: the next request leaves when the previous answer arrives."""

    wait_time = constant(0)

    @task
    def rank(self) -> None:
        self.send()


class FeatureRecommender(Recommender):
    """Closed loop with every feature in the request."""

    ids = False


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


class OpenLoopFeatureRecommender(OpenLoopRecommender):
    ids = False


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


_RECORDING: dict = {}  # the writer and the test's start while a test runs


@events.test_start.add_listener
def _start_recording(environment, **_) -> None:
    shape = environment.shape_class
    try:
        RESULTS.mkdir(parents=True, exist_ok=True)
        writer = SampleWriter(RESULTS / SAMPLES)
        if shape is None:
            (RESULTS / SCHEDULE).unlink(missing_ok=True)
        else:
            schedule = {
                "step_users": shape.users,
                "step_seconds": shape.seconds,
                "steps": shape.steps,
            }
            (RESULTS / SCHEDULE).write_text(json.dumps(schedule))
    except OSError as e:  # e.g. a read-only folder in a container: the run goes on unrecorded
        logging.warning("not recording requests in %s: %s", RESULTS, e)
        return
    # The step schedule's clock starts just before test_start fires (milliseconds earlier);
    # summarize.py's warm-up skip at each step boundary covers the difference.
    _RECORDING.update(writer=writer, t0=time.perf_counter())


@events.request.add_listener
def _record(response_time, exception, context, **_) -> None:
    writer = _RECORDING.get("writer")
    if writer is not None:
        end = time.perf_counter() - _RECORDING["t0"]
        writer.add(end, response_time, exception is None, context.get("candidates", 0))


@events.test_stop.add_listener
def _stop_recording(**_) -> None:
    writer = _RECORDING.pop("writer", None)
    if writer is not None:
        writer.close()
