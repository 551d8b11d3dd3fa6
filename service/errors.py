"""One error hierarchy, mapped to HTTP once (in main.py).

A client's mistake is a ClientError: a 4xx whose message says what to fix and names the field.
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


class ClientError(ServiceError):
    status = 422
    type = "invalid_request"


class PayloadTooLarge(ClientError):
    status = 413
    type = "payload_too_large"


class NotReady(ServiceError):
    status = 503
    type = "not_ready"


class Timeout(ServiceError):
    status = 504
    type = "timeout"
