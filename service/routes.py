"""Thin endpoints: parse, delegate to the Ranker (or the Reloader), serialise."""

from __future__ import annotations

import hmac
import time
from pathlib import Path

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import wire
from service.errors import ClientError, Forbidden, NotReady, PayloadTooLarge, Unauthorized
from service.ranking import contract_summary
from service.schemas import ErrorResponse, RankResponse, ReloadRequest, ReloadResponse

router = APIRouter()


def _doc(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


RANK_ERRORS = {
    413: _doc("body over RANKER_MAX_BODY_BYTES"),
    422: _doc("malformed JSON or an invalid field (named)"),
    503: _doc(
        "refused at once, with Retry-After: the queue of candidate rows is full, the rows "
        "queued would not be scored within timeout_ms, the service is shutting down, or the "
        "model is not loaded yet"
    ),
    504: _doc("not scored within timeout_ms (and, when that ran out while queued, never run)"),
}
NOT_READY = {503: _doc("model not loaded or not warm yet, or shutting down")}


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes (never read whole first)."""
    if int(request.headers.get("content-length") or 0) > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/rank",
    response_model=RankResponse,
    responses=RANK_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/RankRequest"}}
            },
        }
    },
)
async def rank(request: Request) -> Response:
    """Score one user's candidates: pCTR, pCVR, pCTCVR and the fusion score, sorted."""
    state = request.app.state
    if not state.loaded:  # while draining, admission refuses (after RANKER_SHUTDOWN_DELAY_S)
        raise NotReady("the model is not loaded yet")
    t0 = time.perf_counter()
    # a request that would not fit is refused before its body costs anything
    state.ranker.refuse_early(int(request.headers.get("content-length") or 0))
    body = await _read_body(request, state.settings.max_body_bytes)
    # Decoded straight from bytes by msgspec: FastAPI's body parameter, or pydantic itself,
    # costs several times as much (see service/wire.py).
    req = wire.decode(body)
    state.metrics.candidates.observe(len(req.candidates))
    out = await state.ranker.rank(req, len(body))
    state.metrics.latency.observe(time.perf_counter() - t0)
    return json_response(out)


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=NOT_READY)
async def readyz(request: Request) -> Response:
    """200 once the model is loaded and warm; 503 before, and from the moment shutdown starts."""
    state = request.app.state
    if not state.ready:
        raise NotReady("not ready: loading, or shutting down")
    return json_response({"status": "ready", "model_version": state.slot.current.version})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/v1/model", responses=NOT_READY)
async def model(request: Request) -> Response:
    """The served model: version, feature contract summary, ONNX Runtime providers that run."""
    state = request.app.state
    if not state.loaded:
        raise NotReady("the model is not loaded yet")
    e = state.slot.current.engine
    return json_response(
        {
            "model_version": e.version,
            "model_digest": e.digest,
            "kind": e.manifest.kind,
            "providers": e.providers,
            "user_repr_dim": e.repr_dim,
            "calibration": {k: c.method for k, c in e.calibration.items()},
            "features": contract_summary(e.contract),
            "metrics": {
                k: e.manifest.metrics.get(k) for k in ("ctr_auc", "cvr_auc", "ctcvr_auc")
            },
        }
    )


def _check_token(request: Request) -> None:
    token = request.app.state.settings.admin_token
    if token is None:
        raise Forbidden("admin endpoints are off: the service has no RANKER_ADMIN_TOKEN")
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("admin endpoints need `Authorization: Bearer <RANKER_ADMIN_TOKEN>`")


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    dependencies=[Depends(_check_token)],
    responses={
        401: _doc("no or wrong bearer token"),
        403: _doc("admin endpoints are off (no RANKER_ADMIN_TOKEN)"),
        409: _doc("the model was refused (the message says why); the old one keeps serving"),
        422: _doc("malformed JSON, or a path outside RANKER_MODEL_DIR"),
        503: _doc("not loaded yet, or shutting down"),
    },
)
async def reload(request: Request, body: ReloadRequest | None = None) -> Response:
    """Load a model version off the serving path (checked, parity-smoked, warmed) and swap it in
    atomically; requests in flight finish on the version they started with."""
    state = request.app.state
    if not state.loaded or state.admission.draining:
        raise NotReady("not ready: loading, or shutting down")
    folder = None
    if body is not None and body.path is not None:
        root = Path(state.settings.model_dir).resolve()
        folder = (root / body.path).resolve()
        if body.path.startswith("/") or not folder.is_relative_to(root) or folder == root:
            raise ClientError(
                "path must name a version folder inside RANKER_MODEL_DIR", field="path"
            )
    return json_response(await state.reloader.reload(folder))
