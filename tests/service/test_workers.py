"""RANKER_WORKERS > 1 (service/workers.py): real processes on one port, over real HTTP."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from support import request_for

from loadtest.parts import ServiceProcess, metric

TOKEN = "a-token-of-sixteen-chars"


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def rank_total(url: str) -> float:
    return metric(url, "ranker_responses_total", path="/rank", status="200")


@pytest.fixture
def two(exported, tmp_path):
    svc = ServiceProcess(
        tmp_path / "service.log",
        model_dir=exported,
        workers=2,
        access_log=False,
        admin_token=TOKEN,
    ).wait_ready()
    try:
        yield svc
    finally:
        if svc.proc.poll() is None:
            svc.stop()


def test_two_workers_answer_on_one_port_and_metrics_count_both(two, samples):
    contract, s = samples
    body, rows = request_for(contract, s, int(s["row_user"][0]))
    workers = children(two.proc.pid)
    assert len(workers) == 2
    n = 24
    for _ in range(n):  # a connection each: the kernel spreads them over both workers
        r = httpx.post(f"{two.url}/rank", json=body, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == len(rows)
    # whichever worker answers the scrape, it sums every worker's samples
    assert rank_total(two.url) == rank_total(two.url) == n
    text = httpx.get(f"{two.url}/metrics").text
    assert 'ranker_requests_in_flight{path="/metrics"} 1.0' in text
    assert "ranker_model_info{" in text and "process_resident_memory_bytes" not in text
    # a reload would reach one worker of two: refused, naming why
    r = httpx.post(f"{two.url}/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and "RANKER_WORKERS=2" in r.json()["error"]["message"]
    assert two.stop() == 0  # SIGTERM reaches both, each drains, the supervisor exits 0
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def test_a_worker_that_dies_stops_the_service_with_its_status(two):
    first, other = children(two.proc.pid)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while two.proc.poll() is None:
        assert time.monotonic() < deadline, "the supervisor outlived a dead worker"
        time.sleep(0.1)
    assert two.proc.returncode == 128 + signal.SIGKILL
    assert not Path(f"/proc/{other}").exists()


def test_workers_is_checked_at_start():
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="workers"):
        Settings(workers=0)
