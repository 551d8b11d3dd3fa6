"""The one place that knows every part: request -> contract -> user cache -> batcher -> fusion.

Flow of one request: its features are encoded through the feature contract (encoding.py, the
same contract code training used); the user part is keyed by (model version, user id, digest)
and looked up in the user cache; on a miss the user tower runs once (off the event loop). Its
candidates become item rows, split into jobs of at most `max_batch_rows`, and go to the batcher,
which scores rows of many requests in one item-scorer run. Fusion turns pCTR/pCVR/price into the
score; items come back sorted. Duplicate item ids are allowed: each candidate is its own row.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
import numpy as np

from features.contract import FeatureContract
from service import fusion
from service.batcher import Batcher
from service.encoding import RequestEncoder
from service.engine import Engine, Scores
from service.errors import ClientError, Timeout
from service.user_cache import UserCache, user_key
from service.wire import RankRequest


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
        self.encoder = RequestEncoder(self.contract)

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
        raw_uid, raw_uval = self.encoder.encode_user(req)
        item_ids, item_w = self.encoder.encode_items(req)
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
