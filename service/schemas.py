"""Request and response models of POST /rank, strict (no coercion: `"price": false` is an error).

A feature value is an id, a list of ids, or ids with weights of the same length. Ids are
non-negative int64; weights and prices are finite.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    field_validator,
    model_validator,
)

FeatureId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class WeightedIds(_Strict):
    ids: list[FeatureId] = Field(min_length=1)
    weights: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> WeightedIds:
        if len(self.ids) != len(self.weights):
            raise ValueError(f"{len(self.ids)} ids but {len(self.weights)} weights")
        if not all(math.isfinite(w) for w in self.weights):
            raise ValueError("weights must be finite numbers")
        return self


MAX_ID = 2**63 - 1


def _id(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"feature ids are integers, got {type(v).__name__}")
    if not 0 <= v <= MAX_ID:
        raise ValueError(f"feature id {v} is outside [0, 2^63 - 1]")
    return v


def _feature_value(v: object) -> int | list[int] | WeightedIds:
    """One clear message per wrong shape (a plain union would report every branch)."""
    if isinstance(v, dict):
        return WeightedIds.model_validate(v)
    if isinstance(v, list):
        if not v:
            raise ValueError("an empty list of ids: leave the field out instead")
        return [_id(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool):
        return _id(v)
    raise ValueError(
        'a feature value is an id, a list of ids, or {"ids": [...], "weights": '
        f"[...]}}, got {type(v).__name__}"
    )


FeatureValue = Annotated[
    int | list[int] | WeightedIds,
    PlainValidator(
        _feature_value, json_schema_input_type=FeatureId | list[FeatureId] | WeightedIds
    ),
]
Features = dict[str, FeatureValue]


class Candidate(_Strict):
    item_id: str | int = Field(description="your item id, echoed in the response")
    features: Features = Field(description="item, combination and context fields by field id")
    price: float | None = Field(None, ge=0, description="required when the fusion uses price")

    @field_validator("price")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("price must be a finite number")
        return v


class Fusion(_Strict):
    policy: Literal["product", "sum"] | None = Field(
        None, description="product: pctr^a * pcvr^b * price^c; sum: a*pctr + b*pcvr + c*price"
    )
    a: float | None = None
    b: float | None = None
    c: float | None = None


class RankRequest(_Strict):
    user_id: str | int = Field(description="cache key of the user's representation")
    user_features: Features = Field(description="user fields (101, 121, ..., 109_14, ...)")
    context_features: Features | None = Field(None, description="context fields (301)")
    candidates: list[Candidate] = Field(min_length=1)
    fusion: Fusion | None = None
    top_k: int | None = Field(None, ge=1)
    timeout_ms: int | None = Field(None, ge=1, le=60_000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u-1001",
                    "user_features": {
                        "101": 1001,
                        "121": 7,
                        "124": 1,
                        "109_14": {"ids": [60001, 60002], "weights": [3.0, 1.0]},
                    },
                    "context_features": {"301": 2},
                    "candidates": [
                        {
                            "item_id": "sku-1",
                            "features": {"205": 5001, "206": 60001, "207": 70001},
                            "price": 19.9,
                        },
                        {
                            "item_id": "sku-2",
                            "features": {"205": 5002, "206": 60002, "210": [1, 2]},
                            "price": 5.0,
                        },
                    ],
                    "fusion": {"a": 1.0, "b": 1.0, "c": 0.2},
                    "top_k": 10,
                }
            ]
        }
    )


class RankedItem(BaseModel):
    item_id: str | int
    pctr: float
    pcvr: float
    pctcvr: float
    score: float


class FusionUsed(BaseModel):
    policy: Literal["product", "sum"]
    a: float
    b: float
    c: float


class RankResponse(BaseModel):
    model_version: str
    user_cache: Literal["hit", "miss"]
    fusion: FusionUsed
    items: list[RankedItem]


class ErrorBody(BaseModel):
    type: str = Field(description="invalid_request, overloaded, timeout, ... (stable, for code)")
    message: str = Field(description="what is wrong, for people")
    field: str | None = Field(None, description="the request field at fault, when there is one")
    request_id: str = Field(description="also in the X-Request-ID header and the service's logs")


class ReloadRequest(_Strict):
    path: str | None = Field(
        None,
        description="a version folder relative to RANKER_MODEL_DIR (e.g. esmm/20261122T101500Z); "
        "default: the newest version there",
    )


class ReloadResponse(BaseModel):
    status: Literal["reloaded", "unchanged"]
    model_version: str
    previous: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
