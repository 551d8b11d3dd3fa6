"""Admin endpoints: `POST /admin/reload`, behind a bearer token.

The token is checked before anything of the request body is read, and the body is small and
bounded (`MAX_BODY_BYTES`): an anonymous client costs a header comparison, nothing more.

Reload and pinning. `{"path": "esmm/20261122T101500Z"}` loads that version and pins it: the
watcher (RANKER_RELOAD_POLL_S) stops following newer folders, so a rollback sticks. A reload
without a path (no body, or `{}`) loads the newest version and unpins: the watcher follows
again. A pin lasts for the process's life; to start pinned, point RANKER_MODEL_DIR at the
version folder itself. `GET /v1/model` says what is pinned.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

import msgspec
from fastapi import APIRouter, Request, Response

from service.body import read_body, refuse_declared_over
from service.errors import Forbidden, NotReady, Unauthorized
from service.openapi import body_schema, error_docs, json_body
from service.request import decode_json
from service.response import json_response

router = APIRouter()
MAX_BODY_BYTES = 4096


class ReloadRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=512,
                description="a version folder relative to RANKER_MODEL_DIR (e.g. "
                "esmm/20261122T101500Z), loaded and pinned; leave it out to load the newest "
                "version and follow new ones again",
            ),
        ]
        | None
    ) = None


_reload = msgspec.json.Decoder(ReloadRequest)


class ReloadResponse(msgspec.Struct, frozen=True):
    status: Literal["reloaded", "unchanged"]
    model_version: str
    pinned: Annotated[
        str | None, msgspec.Meta(description="the pinned version folder; null: following")
    ] = None
    previous: str | None = None


def _check_token(request: Request) -> None:
    settings = request.app.state.settings
    token = settings.admin_token
    if token is None:
        raise Forbidden("admin endpoints are off: the service has no RANKER_ADMIN_TOKEN")
    if settings.workers > 1:  # a reload would reach one process of several
        raise Forbidden(
            f"admin endpoints are off with RANKER_WORKERS={settings.workers}: every worker "
            "follows new versions (RANKER_RELOAD_POLL_S); to serve one, point RANKER_MODEL_DIR "
            "at it"
        )
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("admin endpoints need `Authorization: Bearer <RANKER_ADMIN_TOKEN>`")


@router.post(
    "/admin/reload",
    responses={
        200: json_body("ReloadResponse"),
        **error_docs(
            {
                401: "no or wrong bearer token",
                403: "admin endpoints are off (no RANKER_ADMIN_TOKEN, or RANKER_WORKERS > 1)",
                409: "the model was refused (the message says why); the old one keeps serving",
                413: f"body over {MAX_BODY_BYTES} bytes",
                422: "malformed JSON, or a path that does not name a folder inside "
                "RANKER_MODEL_DIR",
                503: "not loaded yet, or shutting down",
            }
        ),
    },
    openapi_extra=body_schema("ReloadRequest", required=False),
)
async def reload(request: Request) -> Response:
    """Load a model version off the serving path (checked, parity-smoked, warmed) and swap it in
    atomically; requests in flight finish on the version they started with."""
    _check_token(request)
    state = request.app.state
    refuse_declared_over(request, MAX_BODY_BYTES)
    body = await read_body(request, MAX_BODY_BYTES, state.settings.body_timeout_s)
    if not state.loaded or state.admission.draining:
        raise NotReady("not ready: loading, or shutting down")
    path = None
    if body.strip():
        path = decode_json(_reload, body).path
    folder = None if path is None else state.reloader.version_folder(path)
    return json_response(await state.reloader.reload(folder, pin=folder is not None))
