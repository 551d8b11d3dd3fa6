"""The one place that knows every part: request -> admission -> model -> cache -> batcher ->
fusion.

Flow of one request: its size, fusion and prices are checked; admission takes its candidate
rows in or refuses them at once (admission.py); it leases the current model version (served.py)
and keeps that lease to the end, so a reload never changes the model under it. Its features are
encoded through that version's feature contract; the user part is looked up in the version's
user cache, or the user tower runs once (off the event loop). Its candidates become item rows in
jobs of at most `max_batch_rows`, scored by the batcher together with other requests' rows,
before the request's deadline or not at all. Fusion turns pCTR/pCVR/price into the score; items
come back sorted, with the version that scored them. Duplicate item ids are allowed: each
candidate is its own row.
"""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np

from features.contract import FeatureContract
from service import fusion
from service.admission import Admission, Refused
from service.engine import Scores
from service.errors import ClientError, Overloaded, Timeout
from service.served import ModelSlot, ServedModel
from service.wire import RankRequest


class Ranker:
    def __init__(
        self,
        slot: ModelSlot,
        admission: Admission,
        default_fusion: fusion.FusionParams,
        fusion_bounds: tuple[float, float],
        max_candidates: int,
        default_timeout_ms: int,
    ):
        self.slot, self.admission = slot, admission
        self.default_fusion, self.fusion_bounds = default_fusion, fusion_bounds
        self.max_candidates, self.default_timeout_ms = max_candidates, default_timeout_ms

    def refuse_early(self, body_bytes: int) -> None:
        """Before a body is read: refuse at once when it would not be admitted anyway."""
        if self.admission.full(body_bytes):
            try:
                self.admission.refuse_now()
            except Refused as e:
                raise Overloaded(e.message, e.retry_after_s) from None

    async def rank(self, req: RankRequest, body_bytes: int = 0) -> dict:
        n = len(req.candidates)
        self.admission.learn_size(body_bytes, n)
        if n > self.max_candidates:
            raise ClientError(f"{n} candidates; at most {self.max_candidates}", field="candidates")
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
        timeout = (req.timeout_ms or self.default_timeout_ms) / 1000
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            self.admission.admit(n, timeout)
        except Refused as e:
            raise Overloaded(e.message, e.retry_after_s) from None
        try:
            async with self.slot.lease() as model:
                raw_uid, raw_uval = model.encoder.encode_user(req)
                item_ids, item_w = model.encoder.encode_items(req)
                try:
                    async with asyncio.timeout_at(deadline):
                        scores, hit = await self._score(
                            model, req.user_id, raw_uid, raw_uval, item_ids, item_w, deadline
                        )
                except TimeoutError:  # also the batcher's DeadlineExceeded: never run
                    raise Timeout(f"not scored within {timeout * 1000:.0f} ms") from None
                version = model.version
        finally:
            self.admission.release(n)
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
            "model_version": version,
            "user_cache": "hit" if hit else "miss",
            "fusion": {"policy": params.policy, "a": params.a, "b": params.b, "c": params.c},
            "items": items,
        }

    async def _score(
        self, model: ServedModel, user_id, raw_uid, raw_uval, item_ids, item_w, deadline: float
    ) -> tuple[Scores, bool]:
        user_repr, hit = await model.user_repr(user_id, raw_uid, raw_uval)
        return await model.score(user_repr, item_ids, item_w, deadline), hit


def contract_summary(contract: FeatureContract) -> dict:
    return {
        side: [{"field": f.name, "max_len": f.max_len} for f in contract.side_fields(side)]
        for side in ("user", "item")
    }
