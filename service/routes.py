"""Thin endpoints: parse, delegate to the Ranker, serialise."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import wire
from service.errors import NotReady, PayloadTooLarge
from service.ranking import contract_summary
from service.schemas import ErrorResponse, RankResponse

router = APIRouter()
ERRORS = {
    413: {"model": ErrorResponse, "description": "body over RANKER_MAX_BODY_BYTES"},
    422: {"model": ErrorResponse, "description": "malformed JSON or an invalid field (named)"},
    503: {"model": ErrorResponse, "description": "model not loaded or not warm yet"},
    504: {"model": ErrorResponse, "description": "not scored within timeout_ms"},
}


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post(
    "/rank",
    response_model=RankResponse,
    responses=ERRORS,
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
    if not state.ready:
        raise NotReady("the model is not loaded yet")
    t0 = time.perf_counter()
    limit = state.settings.max_body_bytes
    if int(request.headers.get("content-length") or 0) > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    # Decoded straight from bytes by msgspec: FastAPI's body parameter, or pydantic itself,
    # costs several times as much (see service/wire.py).
    req = wire.decode(body)
    state.metrics.candidates.observe(len(req.candidates))
    out = await state.ranker.rank(req)
    state.metrics.latency.observe(time.perf_counter() - t0)
    return json_response(out)


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> Response:
    """200 once the model is loaded and warm, 503 before."""
    state = request.app.state
    if not state.ready:
        raise NotReady("the model is not loaded and warm yet")
    return json_response({"status": "ready", "model_version": state.engine.version})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/v1/model", responses={503: {"model": ErrorResponse}})
async def model(request: Request) -> Response:
    """The served model: version, feature contract summary, ONNX Runtime providers that run."""
    state = request.app.state
    if not state.ready:
        raise NotReady("the model is not loaded yet")
    e = state.engine
    return json_response(
        {
            "model_version": e.version,
            "kind": e.manifest["model"]["kind"],
            "providers": e.providers,
            "user_repr_dim": e.repr_dim,
            "features": contract_summary(e.contract),
            "metrics": {
                k: e.manifest["metrics"].get(k) for k in ("ctr_auc", "cvr_auc", "ctcvr_auc")
            },
        }
    )
