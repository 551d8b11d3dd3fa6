"""The naive baseline, for `make bench` only: what a server without this design does.

Every request runs the full single-graph model with the user's features tiled onto every
candidate row: no user cache, no cross-request batching. Parsing, validation, encoding, fusion
and the HTTP stack are the real service's, so the benchmark compares the serving design alone.
"""

from __future__ import annotations

import asyncio

import numpy as np

from service.engine import Scores
from service.ranking import Ranker
from service.served import ServedModel


class NaiveRanker(Ranker):
    async def _score(
        self, model: ServedModel, user_id, raw_uid, raw_uval, item_ids, item_w, deadline: float
    ) -> tuple[Scores, bool]:
        n = len(item_ids)
        uid, uw = model.contract.hash_side(
            "user", np.repeat(raw_uid[None], n, 0), np.repeat(raw_uval[None], n, 0)
        )
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(
            model.executor, model.engine.score_full, uid, uw, item_ids, item_w
        )
        return scores, False
