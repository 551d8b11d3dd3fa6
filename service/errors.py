"""One error hierarchy, mapped to HTTP once (in handlers.py).

A client's mistake is a ClientError: a 4xx whose message says what to fix and names the field.
Load the service sheds is a 503 with Retry-After; a request not scored in time is a 504.
Anything else is a 500 with an opaque body and a logged trace; no exception text reaches a
client.
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    type = "internal"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field

    def headers(self) -> dict[str, str]:
        return {}


class ClientError(ServiceError):
    status = 422
    type = "invalid_request"


class MalformedJson(ClientError):
    type = "malformed_json"


class _Closes:
    """Answered before the body was read whole: the connection closes after the answer."""

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class PayloadTooLarge(_Closes, ClientError):
    status = 413
    type = "payload_too_large"


class RequestTimeout(_Closes, ClientError):
    status = 408
    type = "request_timeout"


class ClientClosed(ClientError):
    """The client hung up before its request was read: nobody receives the answer; counted
    under nginx's 499 and never logged as an error."""

    status = 499
    type = "client_closed"


class Unauthorized(_Closes, ClientError):
    """Refused before the body is read, so the connection closes after the answer."""

    status = 401
    type = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer", **super().headers()}


class Forbidden(_Closes, ClientError):
    status = 403
    type = "forbidden"


class NotFound(_Closes, ClientError):
    """An endpoint that is off in this configuration."""

    status = 404
    type = "not_found"


class ModelRefused(ClientError):
    """A reload asked for a model that cannot be served; the old one keeps serving."""

    status = 409
    type = "model_refused"


class Unavailable(ServiceError):
    """503: come back later (`retry_after_s`)."""

    status = 503
    type = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(Unavailable):
    type = "not_ready"


class Overloaded(Unavailable):
    type = "overloaded"


class FeedbackUnavailable(Unavailable):
    """The shared answers /feedback counts against could not be read (service/shared_answers.py):
    nothing of the body was counted, the caller sends it again."""

    type = "feedback_store_unavailable"


class StoreUnavailable(Unavailable):
    """The user store failed or did not answer: features that cannot be proven current are
    never used (service/user_store.py)."""

    type = "user_store_unavailable"


class Timeout(ServiceError):
    status = 504
    type = "timeout"


class ScoringError(ServiceError):
    """The model produced what no response may hold (a non-finite score): a 500, logged."""
