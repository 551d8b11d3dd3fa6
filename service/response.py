"""What the service answers: the /rank response and the error body, declared once as msgspec
structs, encoded by msgspec and documented from the same structs (service/openapi.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
import numpy as np
from fastapi import Response

from service.encoding import RawItems, RequestEncoder
from service.engine import Scores
from service.errors import ScoringError
from service.fusion import FusionParams
from service.request import Key


class RankedItem(msgspec.Struct, frozen=True):
    item_id: Key
    pctr: float
    pcvr: float
    pctcvr: float
    score: float


class FusionUsed(msgspec.Struct, frozen=True):
    policy: Literal["product", "sum"]
    a: float
    b: float
    c: float


class RankResponse(msgspec.Struct, frozen=True):
    model_version: Annotated[
        str, msgspec.Meta(description="NAME/VERSION of the model that scored every item")
    ]
    user_cache: Literal["hit", "miss"]
    fusion: FusionUsed
    items: Annotated[list[RankedItem], msgspec.Meta(description="best first")]
    unknown_items: Annotated[
        list[Key],
        msgspec.Meta(
            description="candidates with no features in the request and an id the item table "
            "lacks: scored by their id alone (counted in ranker_unknown_items_total)"
        ),
    ] = []
    user: Annotated[
        Literal["request", "store", "unknown"],
        msgspec.Meta(
            description="where the user's features came from: the request's user_features, the "
            "user store, or neither (a user id the store lacks: scored by its id alone, field "
            "101, and counted in ranker_unknown_users_total)"
        ),
    ] = "request"
    arm: Annotated[
        str | None,
        msgspec.Meta(
            description="the experiment arm the user is in (RANKER_ARMS), whose fusion ranked "
            "the items where the request set none; null without arms"
        ),
    ] = None
    request_id: Annotated[
        str,
        msgspec.Meta(
            description="this answer's id, as in its X-Request-ID header and the service's logs "
            "(the caller's own X-Request-ID where it sent a sane one): what outcomes are "
            "reported against"
        ),
    ] = ""


class ErrorBody(msgspec.Struct, frozen=True):
    type: Annotated[
        str,
        msgspec.Meta(description="invalid_request, overloaded, timeout, ... (stable, for code)"),
    ]
    message: Annotated[str, msgspec.Meta(description="what is wrong, for people")]
    request_id: Annotated[
        str, msgspec.Meta(description="also in the X-Request-ID header and the service's logs")
    ]
    field: Annotated[
        str | None, msgspec.Meta(description="the request field at fault, when there is one")
    ] = None


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


@dataclass(frozen=True)
class Served:
    """One answer as the service gave it, for what follows it off the response (the
    impression log, the outcomes /feedback counts): the items in their answered order
    (`order` indexes the request's candidates)."""

    request_id: str
    time_s: float  # UNIX time of the answer
    model_version: str
    model_digest: str
    arm: str | None  # RANKER_ARMS's arm of the user; None without arms
    fusion: FusionParams
    user_id: Key
    user: str  # where its features came from: request, store or unknown
    user_cache: str  # hit or miss
    item_ids: list  # the request's candidates' ids, in its order
    order: np.ndarray  # (returned,) positions into item_ids, best first
    pctr: np.ndarray  # (candidates,)
    pcvr: np.ndarray
    pctcvr: np.ndarray
    score: np.ndarray  # (candidates,) the fusion score
    price: np.ndarray | None  # (candidates,) NaN where none; None: no price at all
    context: dict | None = None  # the request's context_features, by name, as sent
    # the features as served, for the log (raw ids: the model's encoder composes the rows)
    encoder: RequestEncoder | None = None
    user_raw: tuple[np.ndarray, np.ndarray] | None = None  # the user's raw row, where known
    user_record: dict | None = None  # else the store's record it was made from
    user_key: int | None = None  # the key the user was found by in the store
    items_raw: RawItems | None = None
    shadow: ShadowScores | None = None  # the arms' shadow model's scores of the same candidates


@dataclass(frozen=True)
class ShadowScores:
    """Another version's scores of an answer's candidates (in the request's order), for the
    log beside the served ones."""

    model_version: str
    pctr: np.ndarray
    pcvr: np.ndarray
    pctcvr: np.ndarray
    score: np.ndarray


def order_of(fused: np.ndarray, top_k: int | None) -> np.ndarray:
    """The candidates' positions sorted by fused score, best first (ties keep the request's
    order), the first `top_k` of them."""
    return np.argsort(-fused, kind="stable")[:top_k]


def ranked(
    version: str,
    hit: bool,
    params: FusionParams,
    item_ids: list,
    scores: Scores,
    fused: np.ndarray,
    order: np.ndarray,
    unknown: list | None = None,
    user: str = "request",
    request_id: str = "",
    arm: str | None = None,
) -> RankResponse:
    """The response: the items of `order` (order_of's), in that order. A non-finite score is a
    defect upstream (the request rules keep every input finite): it fails the request loudly
    instead of reaching a caller as `null` ranked first."""
    if not (np.isfinite(fused).all() and np.isfinite(scores.pctcvr).all()):
        raise ScoringError(f"{version} produced a non-finite score")
    pctr, pcvr, pctcvr = scores.pctr.tolist(), scores.pcvr.tolist(), scores.pctcvr.tolist()
    f = fused.tolist()
    return RankResponse(
        model_version=version,
        user_cache="hit" if hit else "miss",
        fusion=FusionUsed(params.policy, params.a, params.b, params.c),
        items=[RankedItem(item_ids[i], pctr[i], pcvr[i], pctcvr[i], f[i]) for i in order.tolist()],
        unknown_items=unknown or [],
        user=user,
        request_id=request_id,
        arm=arm,
    )


def json_response(body: msgspec.Struct | dict, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")
