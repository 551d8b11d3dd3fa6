"""Errors mapped to HTTP once, and the OpenAPI document completed with the /rank body schema.

Every error body has the same shape (`{"error": {type, message, field, request_id}}`); refusals
carry Retry-After; no exception text reaches a client (unexpected errors are an opaque 500 and a
logged trace, see requestid.py).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from service.errors import ClientError, ServiceError
from service.requestid import REQUEST_ID
from service.routes import json_response
from service.schemas import RankRequest

log = logging.getLogger("service")


def error_response(
    app: FastAPI,
    status: int,
    type_: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
):
    app.state.metrics.responses.labels(str(status), type_).inc()
    body = {"type": type_, "message": message, "field": field, "request_id": REQUEST_ID.get()}
    response = json_response({"error": body}, status)
    response.headers.update(headers or {})
    return response


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError):
        if not isinstance(e, ClientError) and e.status >= 500 and e.status not in (503, 504):
            log.error("service error: %s", e.message)
        return error_response(app, e.status, e.type, e.message, e.field, e.headers())

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: ValidationError | RequestValidationError):
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "json_invalid":
            return error_response(app, 422, "malformed_json", f"malformed JSON: {first.get('msg')}")
        msg = f"{loc or 'body'}: {first.get('msg')}"
        if len(e.errors()) > 1:
            msg += f" (and {len(e.errors()) - 1} more)"
        return error_response(app, 422, "invalid_request", msg, loc or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # 404, 405 from routing
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(app, e.status_code, kind, str(e.detail), headers=e.headers)


def install_openapi(app: FastAPI) -> None:
    """/rank parses its body itself (for speed); the schema still goes into the document."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = original()
            schema = RankRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            defs = schema.pop("$defs", {})
            doc.setdefault("components", {}).setdefault("schemas", {}).update(
                {**defs, "RankRequest": schema}
            )
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
