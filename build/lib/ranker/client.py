"""A small client of the ranking service, standard library only (urllib and json): a caller
needs nothing of this package's dependencies to rank.

    from ranker.client import RankerClient

    client = RankerClient("http://127.0.0.1:8000", timeout_s=2.0)
    answer = client.rank({"user_id": 42, "item_ids": [140004992, 140006390]})
    best = answer["items"][0]["item_id"]

What it does for the caller, and why:
- every request carries `X-Request-ID`: the caller's own (checked against the service's rule,
  service/requestid.py, so it is never silently replaced) or a new one, so a request can be
  found in the service's logs; errors carry it too;
- a 503 (overloaded, not ready, shutting down) is retried after the `Retry-After` the service
  sent (its estimate of the time the queued work takes: service/admission.py), at most
  `retries` times; when it asks for longer than `max_retry_after_s` the client gives up at once
  instead of retrying early into another refusal;
- a 4xx is the request's fault and never retried: RequestRefused, with the service's message,
  the field at fault and its error type; another 5xx is ServerError; no HTTP answer at all
  (refused, reset, timed out) is ConnectionFailed. All are RankerError.

One connection per request (urllib does not keep connections alive): fine for tools and
moderate rates; a high-rate caller wants a pooled HTTP client.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import time
import urllib.error
import urllib.request
import uuid

# service/requestid.py's rule: an id outside it would be replaced by one the caller never sees
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RankerError(Exception):
    """Anything the client could not get a 2xx answer for."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        type_: str | None = None,
        field: str | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.message, self.status, self.type, self.field = message, status, type_, field
        self.request_id, self.attempts, self.retry_after_s = request_id, attempts, retry_after_s

    def __str__(self) -> str:
        what = " ".join(str(x) for x in (self.status, self.type) if x is not None)
        where = f" (field {self.field})" if self.field else ""
        return f"{what + ': ' if what else ''}{self.message}{where} [request {self.request_id}]"


class RequestRefused(RankerError):
    """A 4xx: the request is at fault; retrying it unchanged cannot help."""


class ServerError(RankerError):
    """A 5xx, or a 503 still refused after the retries allowed (`retry_after_s`: what the
    service asked for last)."""


class ConnectionFailed(RankerError):
    """No HTTP answer: the connection was refused or reset, or timed out."""


@dataclasses.dataclass(frozen=True)
class Reply:
    body: dict
    request_id: str  # as the service echoed it in X-Request-ID
    attempts: int  # 1, plus one per 503 retried


class RankerClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float = 5.0,
        retries: int = 2,
        max_retry_after_s: float = 5.0,
    ):
        """`timeout_s` bounds each attempt (connecting, sending, reading the answer): set it
        above the request's `timeout_ms`, which the service itself enforces with a 504.
        `retries`: how many 503s are retried; `max_retry_after_s`: the longest Retry-After
        waited for."""
        if timeout_s <= 0 or retries < 0 or max_retry_after_s < 0:
            raise ValueError(
                "timeout_s must be positive, retries and max_retry_after_s not negative"
            )
        self.base_url = base_url.rstrip("/")
        self.timeout_s, self.retries, self.max_retry_after_s = timeout_s, retries, max_retry_after_s

    def rank(self, body: dict, request_id: str | None = None) -> dict:
        """POST /rank: the service's answer (items best first, model_version, ...)."""
        return self.post("/rank", body, request_id).body

    def rank_ids(
        self, user_id: int | str, item_ids: list[int], request_id: str | None = None, **fields
    ) -> dict:
        """POST /rank by ids alone: the user's features from the service's user store, the
        items' from its item table. `fields`: any other request field (top_k, fusion, ...)."""
        return self.rank({"user_id": user_id, "item_ids": item_ids, **fields}, request_id)

    def post(self, path: str, body: dict, request_id: str | None = None) -> Reply:
        """POST `body` as JSON to `path`, retrying 503s as the service asks."""
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not REQUEST_ID.fullmatch(request_id):
            raise ValueError(
                f"request id {request_id!r}: 1-128 characters of A-Za-z0-9._:- (the service "
                "replaces any other)"
            )
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        request = urllib.request.Request(self.base_url + path, data, headers, method="POST")
        attempt = 0
        while True:
            attempt += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                    echoed = r.headers.get("X-Request-ID", request_id)
                    return Reply(json.loads(r.read()), echoed, attempt)
            except urllib.error.HTTPError as e:
                error = _error(e, request_id, attempt)
                wait = error.retry_after_s
                if wait is None or attempt > self.retries or wait > self.max_retry_after_s:
                    raise error from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, TimeoutError):
                    reason = f"no answer within {self.timeout_s:g} s"
                raise ConnectionFailed(
                    f"{self.base_url}{path}: {reason}", request_id=request_id, attempts=attempt
                ) from e
            time.sleep(wait)


def _error(e: urllib.error.HTTPError, request_id: str, attempts: int) -> RankerError:
    """The service's error body (`{"error": {type, message, field, request_id}}`) as an
    exception; an answer without one (a proxy's page, say) keeps its status and text."""
    text = e.read().decode("utf-8", "replace")
    try:
        error = json.loads(text)["error"]
        message, type_, field = error["message"], error.get("type"), error.get("field")
        request_id = error.get("request_id", request_id)
    except (ValueError, KeyError, TypeError):
        message, type_, field = text.strip()[:500] or e.reason, None, None
    if e.code < 500:
        return RequestRefused(message, e.code, type_, field, request_id, attempts)
    wait = _seconds(e.headers.get("Retry-After")) if e.code == 503 else None
    return ServerError(message, e.code, type_, field, request_id, attempts, wait)


def _seconds(retry_after: str | None) -> float:
    """Retry-After in seconds; the service always sends whole seconds. Absent or in another
    form (an HTTP date, from something in front of the service): 1 s, the service's least."""
    try:
        return max(0.0, float(retry_after))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1.0
