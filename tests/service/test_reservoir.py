"""Warm-up from real requests (service/reservoir.py): a uniform sample of recent bodies and the
slowest with their stages, kept across a restart in RANKER_WARM_FILE, replayed into the first
version before /readyz turns ready and into every version a reload builds before it serves."""

from __future__ import annotations

import json
import random
import shutil

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from loadtest.parts import ServiceProcess, metric
from service.config import Settings
from service.main import create_app
from service.reservoir import Reservoir


def test_the_sample_is_uniform_over_everything_seen():
    means = []
    for seed in range(200):
        res = Reservoir(size=64, rng=random.Random(seed))
        for k in range(10_000):
            res.offer(b"%d" % k, 0.001)
        assert len(res.recent) == 64 and len(set(res.recent)) == 64
        means.append(np.mean([int(b) for b in res.recent]))
    # uniform over 0..9999: mean 4999.5, sd of one run's mean about 2887 / 8 = 361
    assert abs(np.mean(means) - 4999.5) < 4 * 361 / np.sqrt(200)


def test_the_slowest_are_kept_with_their_stages_over_two_generations():
    res = Reservoir(size=4, slow=3, generation=100, rng=random.Random(0))
    for k in range(100):  # the first generation: 97, 98, 99 the slowest
        res.offer(b"a%d" % k, k / 1000, (0.001, 0.002, 0.0, k / 1000, 0.0))
    for k in range(50):  # the second: all fast
        res.offer(b"b%d" % k, 0.0001)
    slow = res.slowest()
    assert [s.body for s in slow[:3]] == [b"a99", b"a98", b"a97"]
    assert slow[0].ms == pytest.approx(99.0) and slow[0].stages["score"] == pytest.approx(99.0)
    assert slow[0].stages["decode"] == pytest.approx(1.0)
    assert set(res.bodies()) >= {b"a99", b"a98", b"a97"} and len(res.bodies()) <= 4 + 6


def test_saved_and_read_back_and_a_damaged_file_is_no_reason_not_to_start(tmp_path, caplog):
    res = Reservoir(size=8, slow=2, rng=random.Random(1))
    for k in range(30):
        res.offer(b'{"user_id": %d}' % k, k / 100)
    res.save(tmp_path / "warm.json")
    back = Reservoir.load(tmp_path / "warm.json", size=8, slow=2)
    assert back.recent == res.recent and back.bodies() == res.bodies()
    (tmp_path / "bad.json").write_text("{not json")
    assert Reservoir.load(tmp_path / "bad.json").bodies() == []
    assert "not read" in caplog.text
    assert Reservoir.load(tmp_path / "missing.json").bodies() == []


def _bodies(bodies: list[dict]) -> list[dict]:
    """The samples' bodies at several candidate counts."""
    out = []
    for k, b in enumerate(bodies[:12]):
        n = [1, 5, 50, 200][k % 4]
        cands = (b["candidates"] * (n // len(b["candidates"]) + 1))[:n]
        out.append({**b, "candidates": cands})
    return out


def test_a_restarted_process_replays_what_the_last_one_served_before_it_is_ready(
    exported, bodies, tmp_path
):
    warm = tmp_path / "warm.json"
    svc = ServiceProcess(model_dir=exported, warm_file=warm, access_log=False).wait_ready()
    try:
        assert metric(svc.url, "ranker_warmup_requests_total", outcome="replayed") == 0
        for b in _bodies(bodies):
            assert httpx.post(f"{svc.url}/rank", json=b, timeout=30).status_code == 200
    finally:
        assert svc.stop() == 0
    saved = json.loads(warm.read_text())
    assert len(saved["recent"]) == 12 and len(saved["slow"]) == 12  # (room for 16 slow ones)
    assert {len(json.loads(b)["candidates"]) for b in saved["recent"]} == {1, 5, 50, 200}
    assert set(saved["slow"][0]["stages"]) == {"decode", "encode", "user", "score", "fusion"}
    again = ServiceProcess(
        tmp_path / "again.log", model_dir=exported, warm_file=warm, access_log=False
    ).wait_ready()
    try:
        # replayed before /readyz answered ready: counted by the time it is
        assert metric(again.url, "ranker_warmup_requests_total", outcome="replayed") == 12
    finally:
        again.stop()
    assert "replayed 12 recent requests (0 refused) of 1-200 candidates" in (
        (tmp_path / "again.log").read_text()
    )


def test_a_reload_replays_the_recent_requests_into_the_new_version(
    exported, second_model, bodies, tmp_path
):
    root = tmp_path / "models"
    shutil.copytree(exported, root / "esmm" / "v1")
    shutil.copytree(second_model, root / "esmm" / "b")
    settings = Settings(model_dir=root, reload_poll_s=0, admin_token="t" * 32)
    with TestClient(create_app(settings)) as c:
        for b in _bodies(bodies):
            assert c.post("/rank", json=b).status_code == 200
        auth = {"authorization": f"Bearer {'t' * 32}"}
        r = c.post("/admin/reload", json={"path": "esmm/b"}, headers=auth)
        assert r.status_code == 200 and r.json()["model_version"] == "esmm/b", r.text
        text = c.get("/metrics").text
    assert 'ranker_warmup_requests_total{outcome="replayed"} 12.0' in text
