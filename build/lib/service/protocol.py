"""uvicorn's httptools protocol with the two limits it lacks, a deadline for a request's head
and a cap on its size, and with each response's head and body written together.

Without the limits a client can hold a connection forever by sending nothing, or a header a
byte at a time, and can make the server buffer a 32 MB header. Here a connection must deliver
each request line and headers within `header_timeout_s` of its first byte (or of connecting),
and at most `max_header_bytes` of them; otherwise it gets 408 or 431 and is closed. Bodies have
their own deadline in the app (routes read them under RANKER_BODY_TIMEOUT_S), and the number of
connections is uvicorn's `limit_concurrency`.

uvicorn writes a response's status line and headers, then its body: two writes, and on a busy
machine the writer is often preempted between them (the first wakes the reader). A replica
killed in that gap has sent a head without its body, which no load balancer can retry: the
caller gets a broken response. Holding the head of a response with a known, non-empty body
until the body's first write makes the two one write: a killed replica has sent nothing (and
the balancer retries the request elsewhere) or, for an answer that fits the socket's buffer,
all of it (docs/scaling.md).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class HeadWithBody:
    """One request-response cycle's view of the connection's transport: the response head,
    when a body of known, non-zero length follows, is held and written with the body's first
    part. Everything else passes through."""

    def __init__(self, transport: asyncio.Transport, cycle) -> None:
        self._transport, self._cycle = transport, cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif not self._head_seen and self._cycle.response_started:
            # uvicorn's send writes the head first once the response has started (a 100
            # Continue is written before that), after reading its content-length
            self._head_seen = True
            if self._body_follows():
                self._head = data  # uvicorn's own bytes, not written to again
                return
        self._transport.write(data)

    def _body_follows(self) -> bool:
        c = self._cycle
        return (
            c.chunked_encoding is False
            and c.expected_content_length > 0
            and c.scope["method"] != "HEAD"
        )

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 5.0
    max_header_bytes = 16 << 10

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()  # a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None:  # the request's cycle writes its response through this
            self.cycle.transport = HeadWithBody(self.transport, self.cycle)  # type: ignore[assignment]

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_header_bytes:
            self._refuse(431, b"request line and headers over the limit")
            # stops the parser (uvicorn sees a parser error and would answer 400: see below)
            raise ConnectionAbortedError("request head over the limit")

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # our refusal already answered and closed
            super().send_400_response(msg)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:  # idle or mid-head, not mid-body
            self._refuse(408, b"request head not received in time")

    def _refuse(self, status: int, msg: bytes) -> None:
        self._disarm()
        self._refused = True
        if self.transport.is_closing():
            return
        self.transport.write(
            STATUS_LINE[status]
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
            + str(len(msg)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + msg
        )
        self.transport.close()


def guarded(header_timeout_s: float, max_header_bytes: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with these limits (uvicorn takes a class)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )
