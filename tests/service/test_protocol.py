"""What a slow, hostile or careless client can do to the real server over real HTTP
(service/protocol.py, routes.py, admin.py, requestid.py, metrics.py)."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest
from support import raw_exchange, serving

TOKEN = "t" * 16


@pytest.fixture(scope="module")
def server(exported):
    settings = dict(
        model_dir=exported,
        admin_token=TOKEN,
        header_timeout_s=0.5,
        body_timeout_s=0.5,
        max_header_bytes=8192,
        max_connections=64,
    )
    with serving(**settings) as (url, app):
        yield url, app


def metric(url: str, prefix: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))


def test_a_header_sent_a_byte_at_a_time_is_cut_off(server):
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        received = b""
        try:
            for _ in range(40):  # a header line every 0.1 s, never the end of the head
                s.sendall(b"x-slow: 1\r\n")
                time.sleep(0.1)
                received += s.recv(4096, socket.MSG_DONTWAIT)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(2)
        try:
            while chunk := s.recv(4096):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert received.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 3  # cut at the head's deadline, not held for 4 s


def test_a_connection_that_sends_nothing_is_closed(server):
    url, _ = server
    t0 = time.monotonic()
    resp = raw_exchange(url, b"", wait_s=5)
    assert resp.status_code == 408 and time.monotonic() - t0 < 3


def test_an_oversized_header_is_refused_and_the_server_keeps_serving(server):
    url, _ = server
    resp = raw_exchange(url, b"GET /healthz HTTP/1.1\r\nx-big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    assert resp.status_code == 431
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_body_that_stops_arriving_gets_408(server):
    url, _ = server
    head = b'POST /rank HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"user_id":'
    t0 = time.monotonic()
    resp = raw_exchange(url, head)
    assert resp.status_code == 408 and resp.json()["error"]["type"] == "request_timeout"
    assert time.monotonic() - t0 < 3


def test_a_client_that_hangs_up_mid_upload_is_no_server_error(server, caplog):
    url, _ = server
    before = metric(url, 'ranker_responses_total{path="/rank",status="499"')
    errors = metric(url, 'ranker_responses_total{path="/rank",status="500"')
    host, port = url.removeprefix("http://").split(":")
    with caplog.at_level(logging.INFO):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b'POST /rank HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n{"u')
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while metric(url, 'ranker_responses_total{path="/rank",status="499"') == before:
            assert time.monotonic() < deadline, "the hang-up was never counted"
            time.sleep(0.05)
    assert metric(url, 'ranker_responses_total{path="/rank",status="500"') == errors
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_admin_token_is_checked_before_the_body_is_read(server):
    """A 30 MB body announced, none sent, no token: refused at once (the body never read)."""
    url, _ = server
    head = b"POST /admin/reload HTTP/1.1\r\nhost: x\r\ncontent-length: 31457280\r\n\r\n"
    t0 = time.monotonic()
    resp = raw_exchange(url, head, wait_s=2)
    assert resp.status_code == 401 and time.monotonic() - t0 < 1.5
    big = raw_exchange(
        url,
        b"POST /admin/reload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
        + TOKEN.encode()
        + b"\r\ncontent-length: 31457280\r\n\r\n",
        wait_s=2,
    )
    assert big.status_code == 413  # with the token: still bounded, before it is read


def test_every_response_is_counted_and_timed_by_status(server):
    url, _ = server
    ok = metric(url, 'ranker_request_seconds_count{path="/healthz",status="200"')
    bad = metric(url, 'ranker_request_seconds_count{path="/rank",status="422"')
    httpx.get(f"{url}/healthz")
    httpx.post(f"{url}/rank", content=b"{}")
    assert metric(url, 'ranker_request_seconds_count{path="/healthz",status="200"') == ok + 1
    assert metric(url, 'ranker_request_seconds_count{path="/rank",status="422"') == bad + 1
    assert metric(url, 'ranker_responses_total{path="/rank",status="422",type="invalid_request"')
    text = httpx.get(f"{url}/metrics").text
    assert 'ranker_request_seconds_bucket{le="0.25",path="/rank",status="422"}' in text


def test_a_newline_in_a_path_cannot_forge_a_log_line(server, caplog):
    url, _ = server
    with caplog.at_level(logging.INFO, logger="service.access"):
        httpx.get(f"{url}/nothing%0a2026-01-01 INFO forged")
        time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "service.access"]
    assert any("forged" in m for m in lines)
    assert all("\n" not in m for m in lines)


def test_the_docs_page_needs_no_outside_host(server):
    url, _ = server
    page = httpx.get(f"{url}/docs").text
    assets = [x.split('"')[1] for x in page.split() if x.startswith(('src="', 'href="'))]
    assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
    for a in assets:
        assert httpx.get(f"{url}{a}").status_code == 200
    assert "/openapi.json" in page


def test_a_response_head_and_its_body_go_out_in_one_write(server, bodies, monkeypatch):
    """A replica killed between writing a head and its body leaves a broken answer that no
    balancer can retry: a response with a body is one write, head and body together. A HEAD
    answer, and a 100 Continue before the head, are not held back."""
    from service import protocol

    writes: list[bytes] = []

    class Recorder:
        def __init__(self, transport):
            self.transport = transport

        def write(self, data):
            writes.append(bytes(data))
            self.transport.write(data)

        def __getattr__(self, name):
            return getattr(self.transport, name)

    init = protocol.HeadWithBody.__init__

    def recording(self, transport, cycle):
        init(self, Recorder(transport), cycle)

    monkeypatch.setattr(protocol.HeadWithBody, "__init__", recording)
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as http:  # one kept-alive connection
        for body in bodies[:3]:
            r = http.post("/rank", json=body)
            assert r.status_code == 200 and r.json()["items"]
            assert writes[-1].startswith(b"HTTP/1.1 200 OK\r\n") and writes[-1].endswith(r.content)
        assert len(writes) == 3  # one write per answer
        r = http.get("/nowhere")  # an error answer too
        assert r.status_code == 404 and writes[-1].endswith(r.content) and len(writes) == 4
        assert http.head("/healthz").status_code == 405  # HEAD: the head alone, not held
        assert writes[-1].startswith(b"HTTP/1.1 405") and writes[-1].endswith(b"\r\n\r\n")
    payload = httpx.Request("POST", f"{url}/rank", json=bodies[0]).content
    writes.clear()
    r = raw_exchange(
        url,
        b"POST /rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"expect: 100-continue\r\nconnection: close\r\n"
        + f"content-length: {len(payload)}\r\n\r\n".encode()
        + payload,
    )
    assert writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(writes) == 2 and writes[1].startswith(b"HTTP/1.1 200 OK\r\n")
