"""The one place that knows every part: request -> contract -> user cache -> batcher -> fusion.

Flow of one request: its user features are encoded through the feature contract (the same code
training used), keyed by (model version, user id, digest), and looked up in the user cache; on a
miss the user tower runs once (off the event loop). Its candidates become item rows, split into
jobs of at most `max_batch_rows`, and go to the batcher, which scores rows of many requests in
one item-scorer run. Fusion turns pCTR/pCVR/price into the score; items come back sorted.
Duplicate item ids are allowed: each candidate is its own row, scored and returned.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
import numpy as np

from features.contract import FeatureContract, Field, Side, truncate
from service import fusion
from service.batcher import Batcher
from service.engine import Engine, Scores
from service.errors import ClientError, ServiceError
from service.user_cache import UserCache, user_key
from service.wire import RankRequest, WeightedIds


class Timeout(ServiceError):
    status = 504
    type = "timeout"


@dataclass
class ScoreJob:
    user_repr: np.ndarray  # (R,)
    item_ids: np.ndarray  # (n, item width) embedding rows
    item_weights: np.ndarray  # (n, item width)


class Ranker:
    def __init__(
        self,
        engine: Engine,
        cache: UserCache,
        default_fusion: fusion.FusionParams,
        fusion_bounds: tuple[float, float],
        max_batch_rows: int,
        max_candidates: int,
        default_timeout_ms: int,
        on_run=lambda rows, jobs: None,
    ):
        self.engine, self.contract, self.cache = engine, engine.contract, cache
        self.default_fusion, self.fusion_bounds = default_fusion, fusion_bounds
        self.max_batch_rows, self.max_candidates = max_batch_rows, max_candidates
        self.default_timeout_ms = default_timeout_ms
        self.on_run = on_run
        # One thread runs the user tower and item scorer, so runs never overlap on 2 cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        self.batcher: Batcher[ScoreJob, Scores] = Batcher(
            self._run_batch, lambda j: len(j.item_ids), max_batch_rows, self.executor
        )
        self._item_columns = {
            f.name: (c.start, f.max_len) for f, c in self.contract.columns("item")
        }
        self._fields = {
            side: {f.name: f for f in self.contract.side_fields(side)} for side in ("user", "item")
        }

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()
        self.executor.shutdown(wait=True)

    # ---- the batch function (runs on the executor thread) ------------------------------------
    def _run_batch(self, jobs: list[ScoreJob]) -> list[Scores]:
        reprs = np.stack([j.user_repr for j in jobs])  # (U, R)
        sizes = [len(j.item_ids) for j in jobs]
        index = np.repeat(np.arange(len(jobs), dtype=np.int64), sizes)
        out = self.engine.score(
            reprs,
            index,
            np.concatenate([j.item_ids for j in jobs]),
            np.concatenate([j.item_weights for j in jobs]),
        )
        self.on_run(int(index.size), len(jobs))
        bounds = np.cumsum([0, *sizes])
        return [
            Scores(out.pctr[a:b], out.pcvr[a:b], out.pctcvr[a:b])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    # ---- encoding ------------------------------------------------------------------------------
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

    def encode_user(self, req: RankRequest) -> tuple[np.ndarray, np.ndarray]:
        feats = {}
        for name, value in req.user_features.items():
            _, ids, weights = self._field("user", name, value, "user_features")
            feats[name] = (ids, weights)
        return self.contract.encode_entity("user", feats)

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

    # ---- the request ---------------------------------------------------------------------------
    async def rank(self, req: RankRequest) -> dict:
        if len(req.candidates) > self.max_candidates:
            raise ClientError(
                f"{len(req.candidates)} candidates; at most {self.max_candidates}",
                field="candidates",
            )
        params = fusion.resolve(
            self.default_fusion,
            msgspec.structs.asdict(req.fusion) if req.fusion else None,
            *self.fusion_bounds,
        )
        prices = np.array([np.nan if c.price is None else c.price for c in req.candidates])
        bad = np.flatnonzero(np.isinf(prices))
        if bad.size:
            raise ClientError("price must be a finite number", field=f"candidates[{bad[0]}].price")
        price = None
        if params.needs_price:
            missing = [i for i, c in enumerate(req.candidates) if c.price is None]
            if missing:
                raise ClientError(
                    f"the fusion uses price (c={params.c}) but candidate {missing[0]} has none",
                    field=f"candidates[{missing[0]}].price",
                )
            price = prices
        raw_uid, raw_uval = self.encode_user(req)
        item_ids, item_w = self.encode_items(req)
        timeout = (req.timeout_ms or self.default_timeout_ms) / 1000
        try:
            async with asyncio.timeout(timeout):
                scores, hit = await self._score(req.user_id, raw_uid, raw_uval, item_ids, item_w)
        except TimeoutError:
            raise Timeout(f"not scored within {timeout * 1000:.0f} ms") from None
        fused = fusion.score(params, scores.pctr, scores.pcvr, price)
        order = np.argsort(-fused, kind="stable")[: req.top_k]
        items = [
            {
                "item_id": req.candidates[i].item_id,
                "pctr": float(scores.pctr[i]),
                "pcvr": float(scores.pcvr[i]),
                "pctcvr": float(scores.pctcvr[i]),
                "score": float(fused[i]),
            }
            for i in order.tolist()
        ]
        return {
            "model_version": self.engine.version,
            "user_cache": "hit" if hit else "miss",
            "fusion": {"policy": params.policy, "a": params.a, "b": params.b, "c": params.c},
            "items": items,
        }

    async def _score(self, user_id, raw_uid, raw_uval, item_ids, item_w) -> tuple[Scores, bool]:
        key = user_key(self.engine.version, user_id, raw_uid, raw_uval)

        async def compute() -> np.ndarray:
            uid, uw = self.contract.hash_side("user", raw_uid[None], raw_uval[None])
            loop = asyncio.get_running_loop()
            return (await loop.run_in_executor(self.executor, self.engine.user_repr, uid, uw))[0]

        user_repr, hit = await self.cache.get_or_compute(key, compute)
        step = self.max_batch_rows
        parts = await asyncio.gather(
            *(
                self.batcher.submit(
                    ScoreJob(user_repr, item_ids[a : a + step], item_w[a : a + step])
                )
                for a in range(0, len(item_ids), step)
            )
        )
        if len(parts) == 1:
            return parts[0], hit
        return Scores(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in ("pctr", "pcvr", "pctcvr"))
        ), hit


def contract_summary(contract: FeatureContract) -> dict:
    return {
        side: [{"field": f.name, "max_len": f.max_len} for f in contract.side_fields(side)]
        for side in ("user", "item")
    }
