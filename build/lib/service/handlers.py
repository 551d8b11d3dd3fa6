"""Errors mapped to HTTP once.

Every error body has the same shape (`{"error": {type, message, field, request_id}}`, declared
in response.py); refusals carry Retry-After; no exception text reaches a client (unexpected
errors are an opaque 500 and a logged trace, see requestid.py). The error type is noted for the
middleware, which counts every response by status and type.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.errors import ClientError, ServiceError
from service.requestid import ERROR_TYPE, REQUEST_ID
from service.response import ErrorBody, ErrorResponse, json_response

log = logging.getLogger("service")


def error_response(
    status: int,
    type_: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
):
    noted = ERROR_TYPE.get(None)
    if noted is not None:
        noted[0] = type_
    body = ErrorResponse(ErrorBody(type_, message, REQUEST_ID.get(), field))
    response = json_response(body, status)
    response.headers.update(headers or {})
    return response


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError):
        if not isinstance(e, ClientError) and e.status >= 500 and e.status not in (503, 504):
            log.error("service error: %s", e.message)
        return error_response(e.status, e.type, e.message, e.field, e.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):  # query or path params
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(422, "invalid_request", f"{loc}: {first.get('msg')}", loc or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # 404, 405 from routing
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, kind, str(e.detail), headers=e.headers)
