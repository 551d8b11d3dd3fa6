"""service/requestid.py: request ids in headers, bodies and logs; the opaque 500."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app


def test_every_response_carries_a_request_id_that_is_in_the_logs(exported, bodies, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    with TestClient(create_app(Settings(model_dir=exported, max_body_bytes=4096))) as c:
        ok = c.post("/rank", json=bodies[0], headers={"x-request-id": "trace-42.a"})
        assert ok.headers["x-request-id"] == "trace-42.a"
        for r in (
            c.post("/rank", json={"user_id": 1}),
            c.post("/rank", content=b"{" * 5000),
            c.get("/nowhere"),
            c.get("/healthz", headers={"x-request-id": "bad id with spaces\x01"}),
        ):
            rid = r.headers["x-request-id"]
            assert len(rid) == 32 and rid != "bad id with spaces"
            if r.status_code >= 400:
                assert r.json()["error"]["request_id"] == rid
        metrics = c.get("/metrics").text
    logged = {rec.request_id for rec in caplog.records if rec.name == "service.access"}
    assert "trace-42.a" in logged and rid in logged
    # every request counted out again, refused ones included; an unknown path under "other"
    assert 'ranker_requests_in_flight{path="/rank"} 0.0' in metrics
    assert 'ranker_requests_in_flight{path="other"} 0.0' in metrics


def test_an_answer_names_its_request_id_in_its_body_as_in_its_header(exported, bodies):
    """What a caller reports outcomes against: its own sane id, else the one made for it."""
    with TestClient(create_app(Settings(model_dir=exported))) as c:
        given = c.post("/rank", json=bodies[0], headers={"x-request-id": "page-7:slot.2"})
        made = [c.post("/rank", json=b) for b in bodies[:2]]
    assert given.status_code == 200 and given.json()["request_id"] == "page-7:slot.2"
    ids = [r.json()["request_id"] for r in made]
    assert ids == [r.headers["x-request-id"] for r in made] and ids[0] != ids[1]
    assert all(len(i) == 32 for i in ids)


def test_an_unexpected_failure_is_an_opaque_500_with_the_trace_only_in_the_log(
    exported, bodies, caplog
):
    with TestClient(create_app(Settings(model_dir=exported)), raise_server_exceptions=False) as c:
        engine = c.app.state.slot.current.engine

        def broken(*args):
            raise RuntimeError("secret internals /etc/passwd")

        engine.score = broken
        r = c.post("/rank", json=bodies[0])
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "internal" and "secret" not in r.text
        assert "Traceback" not in r.text
        assert c.get("/healthz").status_code == 200  # the service goes on
        metrics = c.get("/metrics").text
    assert 'ranker_requests_in_flight{path="/rank"} 0.0' in metrics  # counted out after a 500
    assert any("secret internals" in (rec.exc_text or "") for rec in caplog.records)
