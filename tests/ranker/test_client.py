"""ranker/client.py against the real service over HTTP: a ranking round trip, the service's 4xx
as an exception, its 503s retried after Retry-After; and what no service answers (a proxy's
5xx page, a closed port)."""

from __future__ import annotations

import http.server
import threading
import time
from contextlib import contextmanager

import pytest
from support import request_for, serving

from loadtest.parts import free_port
from ranker.client import (
    REQUEST_ID,
    ConnectionFailed,
    RankerClient,
    RequestRefused,
    ServerError,
)
from service import requestid


@pytest.fixture(scope="module")
def service(exported):
    with serving(model_dir=exported) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def body(samples) -> dict:
    contract, s = samples
    return request_for(contract, s, int(s["row_user"][0]))[0]


@pytest.fixture
def draining(service):
    """The service refusing every /rank with 503 as it does when shutting down; set False to
    stop (the refusals are counted under `draining`)."""
    admission = service[1].state.admission
    before = admission.refused["draining"]
    admission.draining = True
    yield admission, before
    admission.draining = False


def test_a_ranking_round_trip_echoes_the_request_id(service, body):
    client = RankerClient(service[0])
    reply = client.post("/rank", body, request_id="trace-7.a:b")
    assert reply.request_id == "trace-7.a:b" and reply.attempts == 1
    items = reply.body["items"]
    assert sorted(it["item_id"] for it in items) == sorted(c["item_id"] for c in body["candidates"])
    assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)
    assert client.rank(body)["items"] == items  # a request id made by the client
    assert len(client.post("/rank", body).request_id) == 32


def test_a_request_id_the_service_would_replace_is_refused_before_sending(service, body):
    assert REQUEST_ID.pattern.encode() == requestid._SANE.pattern  # one rule, two places
    with pytest.raises(ValueError, match="request id"):
        RankerClient(service[0]).rank(body, request_id="has spaces")


def test_a_4xx_raises_with_the_services_message_and_field(service, body):
    bad = {**body, "candidates": [{**body["candidates"][0], "price": -1.0}]}
    with pytest.raises(RequestRefused) as e:
        RankerClient(service[0]).rank(bad, request_id="bad-price")
    err = e.value
    assert (err.status, err.type, err.field) == (422, "invalid_request", "candidates[0].price")
    assert err.request_id == "bad-price" and err.attempts == 1
    assert "candidates[0].price" in str(err) and ">= 0" in err.message


def test_a_503_is_retried_after_retry_after(service, body, draining):
    admission, before = draining
    threading.Timer(0.3, setattr, (admission, "draining", False)).start()
    t0 = time.monotonic()
    reply = RankerClient(service[0], retries=2).post("/rank", body)
    waited = time.monotonic() - t0
    assert reply.attempts == 2 and admission.refused["draining"] - before == 1
    assert 1.0 <= waited < 3.0  # Retry-After: 1, the service's least


def test_503s_past_the_retries_raise_with_the_last_refusal(service, body, draining):
    admission, before = draining
    with pytest.raises(ServerError) as e:
        RankerClient(service[0], retries=1).rank(body, request_id="shed")
    err = e.value
    assert (err.status, err.type, err.attempts, err.retry_after_s) == (503, "overloaded", 2, 1.0)
    assert err.request_id == "shed" and admission.refused["draining"] - before == 2


def test_a_retry_after_over_the_cap_is_not_waited_for(service, body, draining):
    admission, before = draining
    t0 = time.monotonic()
    with pytest.raises(ServerError) as e:
        RankerClient(service[0], retries=3, max_retry_after_s=0.5).rank(body)
    assert e.value.attempts == 1 and time.monotonic() - t0 < 1.0  # Retry-After: 1, not waited
    assert admission.refused["draining"] - before == 1


@contextmanager
def answering(status: int, text: bytes, headers: dict[str, str]):
    """A local HTTP server that answers every POST with `status` and `text`: (url, hits)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(self.headers["X-Request-ID"])
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_a_5xx_without_the_services_body_keeps_its_status_and_text_and_is_not_retried():
    page = b"<html>bad gateway</html>"
    with (
        answering(502, page, {"Content-Type": "text/html"}) as (url, hits),
        pytest.raises(ServerError) as e,
    ):
        RankerClient(url, retries=3).rank({"user_id": 1}, request_id="via-proxy")
    err = e.value
    assert (err.status, err.type, err.message) == (502, None, "<html>bad gateway</html>")
    assert hits == ["via-proxy"] and err.retry_after_s is None
    assert str(err) == "502: <html>bad gateway</html> [request via-proxy]"


def test_a_503_without_retry_after_waits_one_second():
    with answering(503, b"Service Unavailable", {}) as (url, hits):
        t0 = time.monotonic()
        with pytest.raises(ServerError) as e:
            RankerClient(url, retries=1).rank({"user_id": 1})
    assert len(hits) == 2 and e.value.attempts == 2 and time.monotonic() - t0 >= 1.0


def test_no_answer_is_a_connection_failure():
    with pytest.raises(ConnectionFailed, match="Connection refused"):
        RankerClient(f"http://127.0.0.1:{free_port()}").rank({"user_id": 1})


def test_a_service_that_does_not_answer_in_time_is_a_connection_failure():
    with socket_that_never_answers() as url, pytest.raises(ConnectionFailed, match="within 0.2 s"):
        RankerClient(url, timeout_s=0.2).rank({"user_id": 1})


@contextmanager
def socket_that_never_answers():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
