"""A decoded /rank request -> the embedding rows of both sides, through one model version's
feature contract (numpy, no I/O).

The one place a request's features become model input: each field is checked against the
contract (known, on the right side, one id where the field takes one), lists longer than a
field's columns are truncated by the contract's rule, and both sides are hashed. The Ranker
encodes every request through this; the benchmark uses it too, so its raw ceiling scores exactly
what the service would.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from features.contract import FeatureContract, Field, Side, truncate
from service.errors import ClientError
from service.request import RankRequest, WeightedIds


class Encoded(NamedTuple):
    user_ids: np.ndarray  # (1, user width) embedding rows, int64
    user_weights: np.ndarray  # (1, user width) pooling weights, float32
    item_ids: np.ndarray  # (candidates, item width)
    item_weights: np.ndarray


class RequestEncoder:
    def __init__(self, contract: FeatureContract):
        self.contract = contract
        self._item_columns = {
            f.name: (c.start, f.max_len) for f, c in self.contract.columns("item")
        }
        self._fields = {
            side: {f.name: f for f in self.contract.side_fields(side)} for side in ("user", "item")
        }

    def _field(self, side: Side, name: str, value, where: str) -> tuple[Field, list, list]:
        """One request feature -> (contract field, ids, weights), checked; lists truncated to
        the field's columns by the contract's rule (highest weights kept)."""
        f = self._fields[side].get(name)
        if f is None:
            other = "item" if side == "user" else "user"
            hint = (
                f"; it is a {other} field"
                if name in self._fields[other]
                else f"; known {side} fields: {', '.join(self._fields[side])}"
            )
            raise ClientError(f"unknown {side} field {name!r}{hint}", field=f"{where}.{name}")
        if isinstance(value, int):
            return f, [value], [1.0]
        if isinstance(value, WeightedIds):
            ids, weights = value.ids, value.weights
        else:
            ids, weights = value, [1.0] * len(value)
        if len(ids) > f.max_len:
            if f.max_len == 1:
                raise ClientError(
                    f"field {name} takes one id, got {len(ids)}", field=f"{where}.{name}"
                )
            kept = truncate(ids, weights, f.max_len)
            ids, weights = kept[0].tolist(), kept[1].tolist()
        return f, ids, weights

    def encode(self, req: RankRequest) -> Encoded:
        return Encoded(*self.encode_user(req), *self.encode_items(req))

    def encode_user(self, req: RankRequest) -> tuple[np.ndarray, np.ndarray]:
        """The user's features -> one hashed row (1, user width)."""
        feats = {}
        for name, value in req.user_features.items():
            _, ids, weights = self._field("user", name, value, "user_features")
            feats[name] = (ids, weights)
        raw_ids, raw_vals = self.contract.encode_entity("user", feats)
        return self.contract.hash_side("user", raw_ids[None], raw_vals[None])

    def encode_items(self, req: RankRequest) -> tuple[np.ndarray, np.ndarray]:
        """Candidates -> hashed item rows. Built as Python lists and converted once (a numpy
        round trip per candidate cost 10x more at 500 candidates); a single id, the common
        case, is written without building any list."""
        width = self.contract.width("item")
        base_ids, base_vals = [-1] * width, [0.0] * width
        context = req.context_features or {}
        for name, value in context.items():
            self._put(base_ids, base_vals, *self._field("item", name, value, "context_features"))
        columns = self._item_columns
        rows_ids, rows_vals = [], []
        for i, c in enumerate(req.candidates):
            ids, vals = base_ids.copy(), base_vals.copy()
            for name, value in c.features.items():
                col = columns.get(name)
                kind = type(value)
                if col is not None and kind is int and col[1] == 1:
                    ids[col[0]] = value
                    vals[col[0]] = 1.0
                elif (
                    col is not None
                    and kind is list
                    and name not in context
                    and len(value) <= col[1]
                ):
                    # a plain id list that fits: its columns still hold padding
                    start = col[0]
                    ids[start : start + len(value)] = value
                    vals[start : start + len(value)] = [1.0] * len(value)
                else:  # weighted ids, long lists, context overrides, unknown fields
                    where = f"candidates[{i}].features"
                    self._put(ids, vals, *self._field("item", name, value, where))
            rows_ids.append(ids)
            rows_vals.append(vals)
        return self.contract.hash_side(
            "item", np.array(rows_ids, dtype=np.int64), np.array(rows_vals, dtype=np.float32)
        )

    def _put(self, ids: list, vals: list, f: Field, fids: list, fvals: list) -> None:
        start = self._item_columns[f.name][0]
        pad = f.max_len - len(fids)
        ids[start : start + f.max_len] = [*fids, *([-1] * pad)]
        vals[start : start + f.max_len] = [*fvals, *([0.0] * pad)]
