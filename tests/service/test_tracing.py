"""Tracing (service/tracing.py): with RANKER_TRACING=otlp a /rank request's steps are children of
its server span; with it off, OpenTelemetry is never imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import request_for

from service import tracing
from service.config import Settings
from service.main import create_app

STEPS = ["decode", "encode", "user_repr", "batch_wait", "model_run", "fusion"]


@pytest.fixture(scope="module")
def traced(exported):
    """A client of an app traced into memory (its own provider: the global one is never set)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(model_dir=exported.parent, tracing="otlp"), tracer_provider=provider)
    with TestClient(app) as c:
        yield c, exporter
    assert not tracing.enabled()  # the app's tracer went with its lifespan


def rank_spans(client, exporter, body) -> tuple:
    """(server span, {name: its child span}) of one /rank request."""
    exporter.clear()
    assert client.post("/rank", json=body).status_code == 200
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "POST /rank"
    children = {s.name: s for s in spans if s is not server}
    assert sorted(children) == sorted(STEPS)
    for s in children.values():
        assert s.parent is not None and s.parent.span_id == server.context.span_id
        assert s.context.trace_id == server.context.trace_id
        assert server.start_time <= s.start_time <= s.end_time <= server.end_time
    return server, children


def test_rank_steps_are_children_of_the_server_span(traced, samples):
    client, exporter = traced
    contract, s = samples
    body, rows = request_for(contract, s, int(s["row_user"][0]))
    body["user_id"] = "traced-user"

    _, first = rank_spans(client, exporter, body)
    assert dict(first["user_repr"].attributes) == {"tier": "computed", "hit": False}
    wait, run = first["batch_wait"], first["model_run"]
    assert wait.end_time == run.start_time  # the wait ends when its batch's run begins
    assert run.attributes["rows"] == len(rows) <= run.attributes["batch_rows"]
    order = [first[n].start_time for n in ("decode", "encode", "user_repr", "batch_wait")]
    assert order == sorted(order) and first["fusion"].start_time >= run.end_time

    _, second = rank_spans(client, exporter, body)
    assert dict(second["user_repr"].attributes) == {"tier": "local", "hit": True}


def test_tracing_off_imports_no_opentelemetry(exported, samples):
    """In a fresh interpreter: an app built, started and asked to rank with tracing off (the
    default) imports no opentelemetry module beyond those FastAPI imports itself (its own
    telemetry, dormant here: FastAPI 0.16x requires opentelemetry-api), and nothing of the
    `tracing` extra (SDK, instrumentation, exporter)."""
    contract, s = samples
    body, _ = request_for(contract, s, int(s["row_user"][0]))
    code = """
import json, sys
def otel():
    return {m for m in sys.modules if m.split(".")[0] == "opentelemetry"}
import fastapi.applications
by_fastapi = otel()
from fastapi.testclient import TestClient
from service.config import Settings
from service.main import create_app
with TestClient(create_app(Settings(model_dir=sys.argv[1]))) as c:
    assert c.post("/rank", content=sys.argv[2]).status_code == 200
print(json.dumps({"ours": sorted(otel() - by_fastapi), "all": sorted(otel())}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(exported.parent), json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["ours"] == []
    extra = ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter")
    assert [m for m in got["all"] if m.startswith(extra)] == []
