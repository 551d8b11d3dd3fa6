"""Request ids: every response carries `X-Request-ID`, and every log line written while the
request runs carries the same id (a pure ASGI middleware and a context variable; no per-request
objects beyond the id itself).

A caller's own `X-Request-ID` is kept when it is a sane token (1-128 characters of
`A-Za-z0-9._:-`), so ids can follow a request across services; otherwise one is made. The
middleware is also the last line of defence: an exception that escapes everything else becomes
an opaque 500 with the id, and its trace goes to the log under the same id. It sees every
request and response, so it reports each (`on_request`: method, path, as it arrives;
`on_response`: method, path, status, error type, seconds, once it is answered or fails) for the
metrics, errors and successes alike. The access line escapes the path: a `%0a` in a URL
cannot forge a log line.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

import orjson

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# the error type of the response being written (set by handlers.py), in a list the middleware
# owns, so it reads what a handler wrote whatever context the handler ran in
ERROR_TYPE: contextvars.ContextVar[list[str | None]] = contextvars.ContextVar("error_type")
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
log = logging.getLogger("service.access")


def install_log_field() -> None:
    """Give every log record a `request_id` attribute (for `%(request_id)s` in formats)."""
    old = logging.getLogRecordFactory()
    if getattr(old, "_with_request_id", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = old(*args, **kwargs)
        record.request_id = REQUEST_ID.get()
        return record

    factory._with_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def printable(text: str) -> str:
    """Control and non-ASCII characters escaped: one log line stays one line."""
    return text.encode("unicode_escape").decode("ascii")


class RequestIdMiddleware:
    def __init__(
        self,
        app,
        access_log: bool = True,
        on_request=lambda method, path: None,
        on_response=lambda method, path, status, error_type, seconds: None,
    ):
        self.app, self.access_log = app, access_log
        self.on_request, self.on_response = on_request, on_response

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = given.decode() if given is not None and _SANE.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        error_type: list[str | None] = [None]
        type_token = ERROR_TYPE.set(error_type)
        header = (b"x-request-id", rid.encode())
        status, started, t0 = 500, False, time.perf_counter()
        self.on_request(scope["method"], scope["path"])

        async def send_with_id(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], printable(scope["path"]))
            status, error_type[0] = 500, "internal"
            if not started:
                body = orjson.dumps(
                    {"error": {"type": "internal", "message": "internal error", "request_id": rid}}
                )
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            seconds = time.perf_counter() - t0
            self.on_response(scope["method"], scope["path"], status, error_type[0], seconds)
            if self.access_log:
                log.info(
                    "%s %s %d %.1f ms",
                    printable(scope["method"]),
                    printable(scope["path"]),
                    status,
                    seconds * 1e3,
                )
            ERROR_TYPE.reset(type_token)
            REQUEST_ID.reset(token)
