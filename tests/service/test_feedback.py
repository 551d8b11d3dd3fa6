"""Calibration, watched (service/feedback.py, deploy/prometheus/rules.yml): outcomes reported to
POST /feedback against real answers, the sums the service exports, and the rules and alert
Prometheus computes from them, checked with promtool."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.main import create_app

RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules.yml"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (make test installs it)"
)


def totals(text: str) -> dict:
    """{(sample name, head): value} of the calibration sums, over versions and arms."""
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "head" in s.labels and "bin" not in s.labels:
                key = (s.name, s.labels["head"])
                out[key] = out.get(key, 0.0) + s.value
    return out


@pytest.fixture(scope="module")
def planted(exported, bodies):
    """A model over-predicting clicks twice: users click each returned item with probability
    pCTR / 2 and, once clicked, convert with probability pCVR (calibrated). Returns the sums
    the service exported and what the /feedback answers said."""
    rng = np.random.default_rng(0)
    answers = []
    pool = [c for b in bodies for c in b["candidates"]]
    with TestClient(create_app(Settings(model_dir=exported))) as c:
        for i in range(100):  # 300 candidates each, ids of their own
            picked = rng.choice(len(pool), 300)
            candidates = [{**pool[k], "item_id": 300 * i + j} for j, k in enumerate(picked)]
            body = {**bodies[i % len(bodies)], "user_id": 10_000 + i, "candidates": candidates}
            answers.append(c.post("/rank", json=body).json())
        events = []
        for a in answers:
            for item in a["items"]:
                if rng.random() < item["pctr"] / 2:
                    key = {"request_id": a["request_id"], "item_id": item["item_id"]}
                    events.append({**key, "kind": "click"})
                    if rng.random() < item["pcvr"]:
                        events.append({**key, "kind": "conversion"})
        said = [
            c.post("/feedback", json={"events": events[k : k + 1000]}).json()
            for k in range(0, len(events), 1000)
        ]
        again = c.post("/feedback", json={"events": events[:5]}).json()
        stray = c.post(
            "/feedback",
            json={
                "events": [
                    {"request_id": "never-answered", "item_id": 1, "kind": "click"},
                    {"request_id": answers[0]["request_id"], "item_id": -7, "kind": "click"},
                ]
            },
        ).json()
        text = c.get("/metrics").text
    return totals(text), events, said, again, stray, answers


def test_outcomes_count_once_each_and_strays_are_named(planted):
    sums, events, said, again, stray, answers = planted
    clicks = sum(e["kind"] == "click" for e in events)
    assert sum(s["counted"] for s in said) == len(events) and clicks > 300
    assert again["duplicate"] == 5 and again["counted"] == 0
    assert stray == {
        "counted": 0,
        "duplicate": 0,
        "late": 1,
        "unknown_item": 1,
        "without_click": 0,
    }
    shown = sum(len(a["items"]) for a in answers)
    assert sums["ranker_prediction_count", "ctr"] == shown
    assert sums["ranker_prediction_sum", "ctr"] == pytest.approx(
        sum(i["pctr"] for a in answers for i in a["items"]), rel=1e-5
    )
    assert sums["ranker_labels_total", "ctr"] == clicks
    assert sums["ranker_prediction_count", "cvr"] == clicks  # pCVR on clicked items only


def test_a_planted_miscalibration_shows_as_its_ratio(planted):
    sums = planted[0]
    clicks = sums["ranker_labels_total", "ctr"]
    ctr = sums["ranker_prediction_sum", "ctr"] / clicks
    cvr = sums["ranker_prediction_sum", "cvr"] / sums["ranker_labels_total", "cvr"]
    spread = 4 / math.sqrt(clicks)  # four standard errors of a Poisson count
    assert abs(ctr / 2 - 1) < spread, ctr  # twice what users did
    conversions = sums["ranker_labels_total", "cvr"]
    assert abs(cvr - 1) < 4 / math.sqrt(conversions), cvr  # calibrated


def test_a_conversion_without_its_click_is_not_counted(exported, bodies):
    with TestClient(create_app(Settings(model_dir=exported))) as c:
        a = c.post("/rank", json=bodies[0]).json()
        e = {"request_id": a["request_id"], "item_id": a["items"][0]["item_id"]}
        got = c.post("/feedback", json={"events": [{**e, "kind": "conversion"}]}).json()
        assert got["without_click"] == 1 and got["counted"] == 0
        bad = c.post("/feedback", json={"events": [{**e, "kind": "purchase"}]})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "events[0].kind"
        nested = c.post("/feedback", json={"events": [{**e, "item_id": [1], "kind": "click"}]})
        error = nested.json()["error"]
        assert nested.status_code == 422 and error["field"] == "events[0].item_id"
        assert error["message"].startswith("events[0].item_id: Expected `int | str`")
        off = TestClient(create_app(Settings(model_dir=exported, feedback_rows=0)))
        with off:
            assert (
                off.post("/feedback", json={"events": [{**e, "kind": "click"}]}).status_code == 404
            )


def rule_test(
    tmp_path: Path, series: dict[str, str], tests: list[dict]
) -> subprocess.CompletedProcess:
    doc = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                **t,
            }
            for t in tests
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(doc))
    return subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


@needs_promtool
def test_the_rules_load_and_the_alert_fires_on_the_planted_miscalibration(planted, tmp_path):
    """The service's own sums, as Prometheus would see them grow over two hours of such
    traffic: the ratio recorded near 2, the alert firing for ctr; a calibrated head (ratio 1)
    and a head with too few outcomes do not fire."""
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    sums = planted[0]
    per_min_pred = sums["ranker_prediction_sum", "ctr"] / 10  # a tenth of the run each minute
    per_min_clicks = sums["ranker_labels_total", "ctr"] / 10
    ratio = per_min_pred / per_min_clicks

    def at(head, model="esmm/v1", arm="none"):
        return f'{{head="{head}",model_version="{model}",arm="{arm}"}}'

    series = {
        f"ranker_prediction_sum{at('ctr')}": f"0+{per_min_pred:.4f}x180",
        f"ranker_labels_total{at('ctr')}": f"0+{per_min_clicks:.4f}x180",
        f"ranker_prediction_sum{at('cvr')}": "0+5x180",  # calibrated
        f"ranker_labels_total{at('cvr')}": "0+5x180",
        f"ranker_prediction_sum{at('ctcvr')}": "0+1x180",  # off 3x, on 60 outcomes an hour
        f"ranker_labels_total{at('ctcvr')}": "0+0.333333x180",
    }
    firing = {
        "exp_labels": {
            "severity": "warning",
            "head": "ctr",
            "model_version": "esmm/v1",
            "arm": "none",
        },
        "exp_annotations": {
            "summary": "ctr of esmm/v1 (arm none) is off by more than 10%",
            "description": "Predicted over observed ctr outcomes has been off by more than 10% "
            "for 15 minutes: a model trained on other data, a feature gone missing, or labels "
            "that stopped arriving (docs/loop.md).",
        },
    }
    done = rule_test(
        tmp_path,
        series,
        [
            {
                "promql_expr_test": [
                    {
                        "expr": f"round(ranker:calibration_ratio:1h{at('ctr')}, 0.001)",
                        "eval_time": "120m",
                        "exp_samples": [
                            {"labels": at("ctr"), "value": round(ratio, 3)}  # no name: round
                        ],
                    },
                    {
                        "expr": f"ranker:calibration_ratio:1h{at('cvr')}",
                        "eval_time": "120m",
                        "exp_samples": [
                            {"labels": f"ranker:calibration_ratio:1h{at('cvr')}", "value": 1}
                        ],
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "RankerMiscalibrated", "exp_alerts": []},
                    {
                        "eval_time": "120m",
                        "alertname": "RankerMiscalibrated",
                        "exp_alerts": [firing],
                    },
                ],
            }
        ],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert 1.7 < ratio < 2.3


def test_shared_answers_count_an_event_once_whichever_replica_it_reaches(exported, bodies):
    """Two processes sharing a real redis-server (RANKER_FEEDBACK_SHARED): events for one
    process's answer reported to the other are counted, once across both; the funnel holds
    across them; with Redis gone /feedback is a 503 and counts nothing."""
    import httpx

    from loadtest.parts import RedisServer, ServiceProcess

    with RedisServer() as redis:
        procs = [
            ServiceProcess(
                model_dir=exported,
                redis_url=redis.url,
                feedback_shared="true",
                redis_timeout_ms=500,
                access_log=False,
            )
            for _ in range(2)
        ]
        try:
            a, b = (p.wait_ready() for p in procs)
            answer = httpx.post(f"{a.url}/rank", json=bodies[0], timeout=30).json()
            rid, items = answer["request_id"], [i["item_id"] for i in answer["items"]]

            def report(p, *events) -> dict:
                body = {"events": [{"request_id": rid, "item_id": i, "kind": k} for i, k in events]}
                r = httpx.post(f"{p.url}/feedback", json=body, timeout=30)
                assert r.status_code == 200, r.text
                return r.json()

            import time

            deadline = time.monotonic() + 10  # written off the request path
            while report(b, (items[0], "click"))["late"]:
                assert time.monotonic() < deadline, "the answer never reached Redis"
                time.sleep(0.05)
            assert report(a, (items[0], "click"))["duplicate"] == 1  # counted on b already
            assert report(a, (items[1], "conversion"))["without_click"] == 1
            got = report(b, (items[1], "click"), (items[1], "conversion"), (items[0], "conversion"))
            assert got["counted"] == 3 and got["duplicate"] == 0
            assert report(b, ("not-an-item", "click"))["unknown_item"] == 1
            labels = sum(
                totals(httpx.get(f"{p.url}/metrics").text).get(("ranker_labels_total", h), 0)
                for p in (a, b)
                for h in ("ctr", "cvr", "ctcvr")
            )
            assert labels == 2 + 2 + 2  # two clicks (ctr), two conversions (cvr and ctcvr)
            redis.kill()
            r = httpx.post(
                f"{b.url}/feedback",
                json={"events": [{"request_id": "other", "item_id": 1, "kind": "click"}]},
                timeout=30,
            )
            assert r.status_code == 503
            assert r.json()["error"]["type"] == "feedback_store_unavailable"
        finally:
            for p in procs:
                p.stop()
