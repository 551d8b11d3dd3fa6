"""The online user feature store's record: one user's raw features in Redis, by user id.

Key layout (one Redis hash per user; the loader `ranker users load` writes it, the service reads
it, and anyone may write it with any Redis client):

    ranker:user:<user id>    hash    d -> content digest (32 hex: blake2b-128 of f)
                                     f -> the features, JSON: {"<field>": [[ids], [values]], ...}

The user id is the id of field 101 as a decimal integer, or for a spec's model the raw id of its
user key (features/values.py: an integer as it is, a text hashed), so text user ids are keys too.
`f` holds raw user features by name: Ali-CCP's fields (101, 121, ..., 109_14, ...) or a spec's
user features: raw ids, not hashed (a text id already a raw id), so one store serves every model
of those features, each hashing them through its own feature contract. A field's values are its
feature values (the behaviour counts of 109_14 & co., a list's weights, a numeric feature's
number with id 0; 1.0 elsewhere), as many as its ids.

The same records serve from Redis (`ranker users load`) and from the embedded store, one file on
the service's machine (features/user_table.py, `ranker users build`).

`d` lets a reader prove a cached user representation current with one read of 32 bytes instead
of the features (service/user_store.py): equal digests mean equal features. Writers set both
fields in one HSET, so a reader never sees one without the other; the service still checks that
`d` is the digest of `f` and refuses a record where it is not.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence

from features.bounds import INT64_MAX, MAX_NUMBER
from features.contract import USER_FIELDS

PREFIX = "ranker:user:"

RawFeatures = Mapping[str, tuple[Sequence[int], Sequence[float]]]
NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # a spec's feature name or an Ali-CCP field id


class UserRecordError(ValueError):
    """A stored record that cannot be used; the message says why."""


def key(user_id: int) -> str:
    return f"{PREFIX}{user_id}"


def digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def encode(features: RawFeatures) -> tuple[str, bytes]:
    """(digest, blob) of one user's features; fields in Ali-CCP's order, others by name, so
    equal features give equal bytes whatever order they came in."""
    order = {name: k for k, name in enumerate(USER_FIELDS)}
    body = {}
    for name in sorted(features, key=lambda n: (order.get(n, len(order)), n)):
        ids, values = features[name]
        body[name] = [[int(i) for i in ids], [float(v) for v in values]]
    _check(body)
    blob = json.dumps(body, separators=(",", ":")).encode()
    return digest(blob), blob


def decode(blob: bytes, expected: str | None = None) -> dict[str, tuple[list[int], list[float]]]:
    """A stored blob -> {field: (ids, values)}, checked: names of features (a model skips the
    ones it does not read), as many values as ids, integer ids in int64, finite values;
    `expected`, when given, must be its digest."""
    if expected is not None and digest(blob) != expected:
        raise UserRecordError("its features do not match its digest (written without d?)")
    try:
        body = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserRecordError(f"its features are not JSON ({e})") from None
    except RecursionError:  # the decoder's depth bound (the interpreter's recursion limit)
        raise UserRecordError("its features are nested too deep to be a record") from None
    _check(body)
    return {name: (ids, values) for name, (ids, values) in body.items()}


def _check(body) -> None:
    if not isinstance(body, dict):
        raise UserRecordError("its features are not a JSON object")
    for name, pair in body.items():
        if not NAME.match(name):
            raise UserRecordError(f"field {name[:80]!r} is not a feature name")
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, list) for p in pair)
        ):
            raise UserRecordError(f"field {name}: expected [[ids], [values]]")
        ids, values = pair
        if len(ids) != len(values):
            raise UserRecordError(f"field {name}: {len(ids)} ids but {len(values)} values")
        if not all(type(i) is int and 0 <= i <= INT64_MAX for i in ids):
            raise UserRecordError(f"field {name}: ids must be integers in [0, 2^63)")
        if not all(type(v) in (int, float) and math.isfinite(v) for v in values):
            raise UserRecordError(f"field {name}: values must be finite numbers")
        if not all(abs(v) <= MAX_NUMBER for v in values):
            raise UserRecordError(f"field {name}: a value over {MAX_NUMBER:g} in size")
