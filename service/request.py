"""The POST /rank request: its one declaration, its decoding and every rule that needs no model.

Declared once, as strict msgspec structs (no coercion: `"price": false` is an error). The
OpenAPI document's schema is derived from these same structs (service/openapi.py), so the
document cannot drift from what is decoded. `size(body, rules)` reads what admission needs
(candidate count, checked against the cap, and timeout) without decoding; `decode(body, rules)`
is the only way a body becomes a request: the same cap first, one decoding pass from bytes
(msgspec: about 0.6 ms for 500 candidates here, several times less than pydantic), then the
rules that depend on settings (caps, the fusion's range, the stores the service has). Anything
wrong is a ClientError naming the field at fault (`candidates[3].features.206.ids[2]`). The
rules that need the model (its feature names and kinds, its key types) are the encoder's
(service/encoding.py); the body's size and arrival time are service/body.py's.

Numbers are checked for the arithmetic they feed, so every accepted request has finite scores:
- feature ids: integers in [0, 2^63 - 1], hashed as int64 by the feature contract;
- weights: in (0, 1e6]. They scale float32 embeddings summed over a field's ids; positive, so
  a mean-pooled field always divides by a positive sum. A weight on a single-valued field is the
  field's value, as in training (it scales the embedding when the contract pools with weights,
  and is ignored otherwise);
- price: in [0, 1e9]; numeric attributes: at most 1e18 in size; fusion exponents within
  RANKER_FUSION_MIN..MAX (at most 8 in size), so pctr^a * pcvr^b * price^c stays finite in
  float64 (probabilities are floored at 1e-12);
- user and item ids: strings of 1-256 characters or int64 integers: what is accepted can be
  written back, and a cache key stays small;
- lists: at most 10,000 ids a feature, 64 fields an entity.
Strings must be valid UTF-8 (JSON escapes included: a lone surrogate is refused).

Room for what comes next: a request that names its candidates by id only adds a field here and
a rule in `Rules.check`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import msgspec
import numpy as np

from features.bounds import INT64_MAX, INT64_MIN, MAX_PRICE, MAX_WEIGHT
from features.bounds import MAX_NUMBER as MAX_ATTRIBUTE
from service import fusion
from service.errors import ClientError, MalformedJson

MAX_KEY_CHARS = 256
MAX_EXPONENT = 8.0
MAX_IDS = 10_000
MAX_FIELDS = 64
MAX_TIMEOUT_MS = 60_000

FeatureId = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
# A single value: an integer id (negative only for a numeric feature: the encoder says which),
# a text id of a spec's text feature, or a number of a numeric one.
Integer = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]
Number = Annotated[float, msgspec.Meta(ge=-MAX_ATTRIBUTE, le=MAX_ATTRIBUTE)]
Weight = Annotated[float, msgspec.Meta(gt=0, le=MAX_WEIGHT)]
# (an Ali-CCP model's ids are at least 0: the encoder says so, naming the id; a spec's integer
# ids lose their sign bit, as training's do)
Ids = Annotated[list[Integer | Text], msgspec.Meta(min_length=1, max_length=MAX_IDS)]
Key = (
    Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]
    | Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
)
Exponent = Annotated[float, msgspec.Meta(ge=-MAX_EXPONENT, le=MAX_EXPONENT)]
Attribute = Annotated[float, msgspec.Meta(ge=-MAX_ATTRIBUTE, le=MAX_ATTRIBUTE)]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class WeightedIds(_Strict):
    ids: Ids
    weights: Annotated[list[Weight], msgspec.Meta(min_length=1, max_length=MAX_IDS)]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.weights):
            raise ValueError(f"{len(self.ids)} ids but {len(self.weights)} weights")


FeatureValue = Integer | Text | Number | Ids | WeightedIds
Features = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], FeatureValue],
    msgspec.Meta(
        max_length=MAX_FIELDS,
        description="by feature name (a spec's) or Ali-CCP field id: an id (integer, or text "
        'for a text feature), a number (a numeric feature), a list of ids, or {"ids": [...], '
        '"weights": [...]}',
    ),
]


class Candidate(_Strict):
    item_id: Annotated[
        Key,
        msgspec.Meta(
            description="your item id, echoed in the response; with an item table loaded "
            "(RANKER_ITEM_TABLE) an integer id is looked up there (Ali-CCP: the id of field 205)"
        ),
    ]
    features: Annotated[
        Features,
        msgspec.Meta(
            description="item, combination and context fields by field id; with an item "
            "table, a field given here overrides the stored one for this candidate"
        ),
    ] = {}
    price: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=MAX_PRICE,
                description="required when the fusion uses price; a model trained with price "
                "as a feature reads it too (else the item table's)",
            ),
        ]
        | None
    ) = None
    attributes: (
        Annotated[
            dict[
                Annotated[str, msgspec.Meta(min_length=1, max_length=32)],
                Attribute,
            ],
            msgspec.Meta(
                max_length=MAX_FIELDS,
                description="numeric item attributes by name (rating, sales, ...), for a model "
                "trained on them (ranker train --items); they override the item table's, and "
                "names the model does not take are ignored",
            ),
        ]
        | None
    ) = None


class Fusion(_Strict):
    policy: Literal["product", "sum"] | None = None
    a: Exponent | None = None
    b: Exponent | None = None
    c: Exponent | None = None


class RankRequest(_Strict):
    user_id: Annotated[
        Key, msgspec.Meta(description="the user's id, part of its cached representation's key")
    ]
    user_features: (
        Annotated[
            Features,
            msgspec.Meta(
                description="user fields (101, 121, ..., 109_14, ...); leave out to use the "
                "user's stored features (RANKER_USER_STORE)"
            ),
        ]
        | None
    ) = None
    candidates: Annotated[list[Candidate], msgspec.Meta(min_length=1)] | None = None
    item_ids: (
        Annotated[
            list[Key],
            msgspec.Meta(
                min_length=1,
                description="candidates by id alone, their features from the item table "
                "(RANKER_ITEM_TABLE); give this or `candidates`",
            ),
        ]
        | None
    ) = None
    context_features: (
        Annotated[Features, msgspec.Meta(description="context fields (301)")] | None
    ) = None
    fusion: (
        Annotated[
            Fusion,
            msgspec.Meta(
                description="product: pctr^a * pcvr^b * price^c; sum: a*pctr + b*pcvr + c*price"
            ),
        ]
        | None
    ) = None
    top_k: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = None
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_TIMEOUT_MS)] | None = None

    def item_keys(self) -> list:
        """The candidates' item ids, in request order."""
        if self.item_ids is not None:
            return self.item_ids
        return [c.item_id for c in self.candidates or ()]


# The README's first request (docs/first-request.json): a user and four items of the default
# model's training data (`make train`), by ids, as a recommender calls the default model.
EXAMPLE = {
    "user_id": 10004268,
    "item_ids": [140006228, 140002264, 140007351, 140005086],
    "context_features": {"scene": "search"},
    "fusion": {"a": 1.0, "b": 1.0, "c": 0.2},
    "top_k": 4,
}


@dataclasses.dataclass(frozen=True)
class Ranking:
    """A request that met every rule, with what the rules resolved."""

    req: RankRequest
    fusion: fusion.FusionParams
    price: np.ndarray  # float64 per candidate, NaN where the request gives none
    timeout_s: float

    @property
    def rows(self) -> int:
        return len(self.price)

    def prices(self, resolved: np.ndarray | None = None) -> np.ndarray | None:
        """Each candidate's price for the fusion: `resolved` (the encoder's: the request's, else
        the item table's), or the request's alone; None when the fusion does not use price. A
        candidate left with none is a ClientError naming it."""
        if not self.fusion.needs_price:
            return None
        price = self.price if resolved is None else resolved
        missing = np.flatnonzero(np.isnan(price))
        if missing.size:
            i = int(missing[0])
            by_ids = self.req.item_ids is not None
            raise ClientError(
                f"the fusion uses price (c={self.fusion.c}) but candidate {i} has none, in the "
                "request or the item table",
                field=f"item_ids[{i}]" if by_ids else f"candidates[{i}].price",
            )
        return price


@dataclasses.dataclass(frozen=True)
class Rules:
    """The limits that come from settings, and what the service was given to look things up
    in (an item table, a user store): a request that needs one it lacks is refused here."""

    max_candidates: int
    default_fusion: fusion.FusionParams
    fusion_min: float
    fusion_max: float
    default_timeout_ms: int
    item_table: bool = False  # RANKER_ITEM_TABLE is set: candidates may come by id alone
    user_store: bool = False  # RANKER_USER_STORE is set: user_features may be left out

    @classmethod
    def from_settings(cls, s) -> Rules:
        """From a service.config.Settings."""
        return cls(
            s.max_candidates,
            fusion.FusionParams(s.fusion_policy, s.fusion_a, s.fusion_b, s.fusion_c),
            s.fusion_min,
            s.fusion_max,
            s.default_timeout_ms,
            item_table=s.item_table is not None,
            user_store=bool(s.user_store),
        )

    def check(self, req: RankRequest) -> Ranking:
        """The rules that need no model (the model's own, its field names and kinds, are the
        encoder's: service/encoding.py). Prices a request leaves out may come from the item
        table: `Ranking.prices` checks them once the encoder resolved them."""
        if (req.candidates is None) == (req.item_ids is None):
            raise ClientError(
                "give the candidates either as `candidates` or as `item_ids`, not both",
                field="item_ids" if req.candidates is not None else "candidates",
            )
        if req.item_ids is not None and not self.item_table:
            raise ClientError(
                "ranking by item_ids needs an item table (RANKER_ITEM_TABLE)", field="item_ids"
            )
        if req.user_features is None and not self.user_store:
            raise ClientError(
                "user_features is required: this service has no user store (RANKER_USER_STORE)",
                field="user_features",
            )
        params = self._fusion(req.fusion)
        if req.candidates is not None:
            price = np.array(
                [np.nan if c.price is None else c.price for c in req.candidates], np.float64
            )
        else:
            price = np.full(len(req.item_ids), np.nan)
        timeout_ms = req.timeout_ms or self.default_timeout_ms
        return Ranking(req, params, price, timeout_ms / 1000)

    def _fusion(
        self, given: Fusion | None, default: fusion.FusionParams | None = None
    ) -> fusion.FusionParams:
        """The default policy (the service's, or `default`: an arm's) with a request's
        overrides, each within the configured bounds."""
        d = self.default_fusion if default is None else default
        if given is None:
            return d
        values = {"policy": given.policy or d.policy}
        for key in ("a", "b", "c"):
            v = getattr(given, key)
            if v is None:
                values[key] = getattr(d, key)
            elif not self.fusion_min <= v <= self.fusion_max:
                raise ClientError(
                    f"fusion.{key}={v} is outside the allowed range "
                    f"[{self.fusion_min}, {self.fusion_max}]",
                    field=f"fusion.{key}",
                )
            else:
                values[key] = v
        return fusion.FusionParams(**values)

    def with_default(self, r: Ranking, default: fusion.FusionParams) -> Ranking:
        """`r` ranked by `default` (an arm's fusion) where its request sets no fusion of its own."""
        return dataclasses.replace(r, fusion=self._fusion(r.req.fusion, default))


class _Size(msgspec.Struct):
    candidates: list[msgspec.Raw] = []
    item_ids: list[msgspec.Raw] = []
    timeout_ms: msgspec.Raw = msgspec.Raw(b"null")


@dataclasses.dataclass(frozen=True)
class Size:
    """What admission needs of a request, read before it is decoded."""

    rows: int
    timeout_s: float


_size = msgspec.json.Decoder(_Size)
# The decoders bound nesting by the interpreter's recursion limit (about 1,000 levels: far
# beyond any request's 3) and raise RecursionError past it: a 400, never a 500.
TOO_DEEP = "malformed JSON: a value nested deeper than the decoder allows"
_decoder = msgspec.json.Decoder(RankRequest)
_any = msgspec.json.Decoder()


def size(body: bytes, rules: Rules) -> Size:
    """Its candidate count (checked against the cap) and its timeout, without decoding it: the
    scan skips everything but the candidates' boundaries (0.06 ms for 500; 18 ms for 60,000), so
    a request that is refused, over the cap or by admission, costs that and not its decoding.
    A malformed body is refused here; a wrong value is left to `decode`, which names it."""
    try:
        scan = _size.decode(body)
    except msgspec.ValidationError:
        return Size(0, rules.default_timeout_ms / 1000)  # `decode` says what is wrong
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise MalformedJson(f"malformed JSON: {e}") from None
    except RecursionError:  # the decoder's own depth bound: a value nested too deep
        raise MalformedJson(TOO_DEEP) from None
    n = len(scan.candidates) + len(scan.item_ids)
    if n > rules.max_candidates:
        raise ClientError(f"{n} candidates; at most {rules.max_candidates}", field="candidates")
    timeout_ms = rules.default_timeout_ms
    given = _any.decode(scan.timeout_ms)
    if type(given) is int and 1 <= given <= MAX_TIMEOUT_MS:
        timeout_ms = given
    return Size(n, timeout_ms / 1000)


def decode(body: bytes, rules: Rules) -> Ranking:
    """Bytes -> a request that met every rule, or a ClientError naming the field at fault."""
    size(body, rules)  # the cap before the work it bounds
    return decode_sized(body, rules)


def decode_sized(body: bytes, rules: Rules) -> Ranking:
    """`decode` for a body whose `size` was already taken (the Ranker's: admission needs it)."""
    return rules.check(decode_json(_decoder, body))


def decode_json(decoder: msgspec.json.Decoder, body: bytes):
    """A JSON body through a strict decoder, any failure a ClientError that names the field at
    fault (or MalformedJson): the one way the service's bodies are read (/rank, /feedback)."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        try:
            raise _located(body, str(e)) from None
        except RecursionError:  # naming the field needs the whole value decoded: too deep
            raise ClientError(f"body: {e}") from None
    except RecursionError:
        raise MalformedJson(TOO_DEEP) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise MalformedJson(f"malformed JSON: {e}") from None


def _located(body: bytes, message: str) -> ClientError:
    """msgspec's error with its path made exact: it writes a feature's dict key as `[...]`, so
    the feature values of that dict are checked one by one to name the key (errors are rare:
    this costs nothing on the hot path)."""
    what, _, path = message.rpartition(" - at `")
    path = path.rstrip("`")
    if not what:  # no location: the body as a whole
        return ClientError(f"body: {message}")
    if path.startswith("key` in `"):  # a dict key itself: a field name
        path, what = path.removeprefix("key` in `"), f"a field name: {what}"
    if "[...]" in path:
        head, _, tail = path.partition("[...]")
        node = _walk(_any.decode(body), head)
        kind = Attribute if head.endswith(".attributes") else FeatureValue  # the dict's values
        if isinstance(node, dict):
            for key, value in node.items():
                try:
                    msgspec.convert(value, kind, strict=True)
                except msgspec.ValidationError as e:
                    inner, _, sub = str(e).rpartition(" - at `")
                    what = inner or str(e)
                    tail = sub.rstrip("`")[1:] if inner else ""  # "$..." -> "..."
                    path = f"{head}.{key}{tail}"
                    break
            else:  # the key itself was wrong (too long)
                path = f"{head}"
    field = path.removeprefix("$").removeprefix(".") or None
    return ClientError(f"{field or 'body'}: {what}", field=field)


def _walk(obj, path: str):
    """Follow a msgspec path (`$.candidates[3].features`) into decoded JSON."""
    for part in path.removeprefix("$").replace("[", ".[").split("."):
        if not part:
            continue
        try:
            obj = obj[int(part[1:-1])] if part.startswith("[") else obj[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return obj
