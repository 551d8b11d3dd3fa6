"""Thin endpoints: read, delegate to the Ranker, serialise. Admin endpoints are in admin.py."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.body import read_body, refuse_declared_over
from service.errors import NotFound, NotReady
from service.feedback import FeedbackRequest
from service.openapi import body_schema, error_docs, json_body
from service.ranking import contract_summary
from service.request import decode_json
from service.response import json_response

router = APIRouter()

RANK_ERRORS = error_docs(
    {
        408: "the body did not arrive within RANKER_BODY_TIMEOUT_S",
        413: "body over RANKER_MAX_BODY_BYTES (refused before it is read when declared)",
        422: "malformed JSON, too many candidates, or an invalid field (named)",
        503: "refused at once, with Retry-After: the rows queued would not be scored within "
        "timeout_ms, the queue's memory bound is full, the service is shutting down, or the "
        "model is not loaded yet",
        504: "not scored within timeout_ms (and, when that ran out while queued, never run)",
    }
)
NOT_READY = error_docs({503: "model not loaded or not warm yet, or shutting down"})


@router.post(
    "/rank",
    responses={200: json_body("RankResponse"), **RANK_ERRORS},
    openapi_extra=body_schema("RankRequest"),
)
async def rank(request: Request) -> Response:
    """Score one user's candidates: pCTR, pCVR, pCTCVR and the fusion score, sorted."""
    state = request.app.state
    if not state.loaded:  # while draining, admission refuses (after RANKER_SHUTDOWN_DELAY_S)
        raise NotReady("the model is not loaded yet")
    s = state.settings
    refuse_declared_over(request, s.max_body_bytes)  # the client's error, before any overload
    state.ranker.refuse_early()  # before the body costs anything
    body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
    return json_response(await state.ranker.rank(body))


_feedback = msgspec.json.Decoder(FeedbackRequest)
FEEDBACK_BYTES = 256 << 10  # 1,000 events fit many times over


@router.post(
    "/feedback",
    responses={
        200: json_body("FeedbackResponse"),
        **error_docs(
            {
                404: "outcomes are off (RANKER_FEEDBACK_ROWS=0)",
                413: f"body over {FEEDBACK_BYTES} bytes",
                422: "malformed JSON, or an invalid event (named)",
            }
        ),
    },
    openapi_extra=body_schema("FeedbackRequest"),
)
async def feedback(request: Request) -> Response:
    """Clicks and conversions against the answers that showed them, by `request_id` and
    `item_id`: counted once each, for calibration (docs/loop.md)."""
    state = request.app.state
    if state.outcomes is None:
        raise NotFound("outcomes are off: RANKER_FEEDBACK_ROWS is 0")
    refuse_declared_over(request, FEEDBACK_BYTES)
    body = await read_body(request, FEEDBACK_BYTES, state.settings.body_timeout_s)
    events = decode_json(_feedback, body).events
    return json_response(await state.outcomes.report(events))


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
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", responses=NOT_READY)
async def model(request: Request) -> Response:
    """The served model: version, content digest, feature contract summary, ONNX Runtime
    providers that run, and whether reloads follow the newest version or are pinned."""
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
            "metrics": {k: e.manifest.metrics.get(k) for k in ("ctr_auc", "cvr_auc", "ctcvr_auc")},
            "pinned": state.reloader.pinned,
        }
    )
