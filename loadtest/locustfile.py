"""Locust against a running ranker: `make loadtest HOST=http://127.0.0.1:8000` (headless), or the
compose `loadtest` profile (web UI on :8089). Traffic comes from loadtest/traffic.py."""

from __future__ import annotations

import os

import orjson
from locust import FastHttpUser, task
from traffic import Traffic  # beside this file: locust puts its folder on sys.path


class Recommender(FastHttpUser):
    """A recommender calling POST /rank back to back (closed loop)."""

    def on_start(self) -> None:
        self.traffic = Traffic(seed=int(os.environ.get("LOADTEST_SEED", "0")) + id(self) % 1000)

    @task
    def rank(self) -> None:
        body = self.traffic.request()
        n = len(body["candidates"])
        with self.client.post(
            "/rank",
            data=orjson.dumps(body),
            name=f"/rank ({bucket(n)})",
            headers={"content-type": "application/json"},
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")


def bucket(n: int) -> str:
    return "<=100" if n <= 100 else "<=300" if n <= 300 else "<=600" if n <= 600 else ">600"
