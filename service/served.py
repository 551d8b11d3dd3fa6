"""A served model version, and the slot that holds the current one.

`ServedModel` is one loaded version with everything that must follow it: the engine (ONNX
sessions), the request encoder of its feature contract, its user cache (keys and Redis values
carry the model's content digest, never its name) and its own batcher, so a run never mixes
rows of two versions.

`ModelSlot` holds the current version. A request leases the model once and uses that lease from
encoding to scores, so a swap never changes the model under a request: requests in flight finish
on the version they started with, new ones get the new version, and the retired version closes
(its queue drained) when its last lease ends. Swapping is one assignment on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from service import tracing
from service.batcher import Batcher
from service.encoding import RequestEncoder, StoredItems
from service.engine import Engine, Scores
from service.user_cache import UserCache, stored_user_key, user_key

log = logging.getLogger("service.served")


@dataclass
class ScoreJob:
    user_repr: np.ndarray  # (R,)
    item_ids: np.ndarray  # (n, item width) embedding rows
    item_weights: np.ndarray  # (n, item width)
    ran: tuple[int, int, int] | None = None  # its batch's run (start, end ns, rows); traced only
    queued: int = field(default_factory=time.perf_counter_ns)  # when it was made (submitted)


class ServedModel:
    def __init__(
        self,
        engine: Engine,
        cache: UserCache,
        max_batch_rows: int,
        executor: Executor,
        on_run: Callable[[int, int, float, list[float]], None] = lambda *run: None,
        items: StoredItems | None = None,
        table_stamp: tuple | None = None,
    ):
        self.engine, self.version, self.contract = engine, engine.version, engine.contract
        self.digest = engine.digest
        self.items = items  # the item table, hashed through this version's contract
        self.table_stamp = table_stamp  # the table file it was built from (reload.py)
        self.encoder = RequestEncoder(self.contract, items)
        self.cache, self.executor, self.on_run = cache, executor, on_run
        self.max_batch_rows = max_batch_rows
        self.batcher: Batcher[ScoreJob, Scores] = Batcher(
            self._run_batch, lambda j: len(j.item_ids), max_batch_rows, executor
        )
        if engine.warm_timings:  # a scoring rate before traffic, from the largest warm run
            self.batcher.observe(*max(engine.warm_timings.items()))
        self.leases = 0
        self.retired = False

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    # ---- runs on the executor thread ------------------------------------------------------------
    def _run_batch(self, jobs: list[ScoreJob]) -> list[Scores]:
        """One run of the item scorer over every job's rows. `on_run` gets its rows, jobs, run
        time and each job's wait in the queue (seconds): the stages a request's time under load
        is made of, measured where they happen."""
        began = time.perf_counter_ns()
        start = time.time_ns()
        reprs = np.stack([j.user_repr for j in jobs])  # (U, R)
        sizes = [len(j.item_ids) for j in jobs]
        index = np.repeat(np.arange(len(jobs), dtype=np.int64), sizes)
        out = self.engine.score(
            reprs,
            index,
            np.concatenate([j.item_ids for j in jobs]),
            np.concatenate([j.item_weights for j in jobs]),
        )
        waits = [(began - j.queued) / 1e9 for j in jobs]
        self.on_run(int(index.size), len(jobs), (time.perf_counter_ns() - began) / 1e9, waits)
        if tracing.enabled():
            ran = (start, time.time_ns(), int(index.size))
            for j in jobs:
                j.ran = ran
        bounds = np.cumsum([0, *sizes])
        return [
            Scores(out.pctr[a:b], out.pcvr[a:b], out.pctcvr[a:b])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    # ---- on the event loop --------------------------------------------------------------------
    async def user_repr(self, user_id, uid, uw, lists: np.ndarray) -> tuple[np.ndarray, bool]:
        """(user part, hit) of one user's encoded row (1, user width) and cross lists: from
        the cache, or the user tower run once (off the loop). The user part is the
        representation with the lists packed after it (encoder.split takes it apart)."""
        key = user_key(self.digest, user_id, uid, uw, lists.tobytes())

        async def compute() -> np.ndarray:
            return await self._part(uid, uw, lists)

        return await self.cache.get_or_compute(key, compute)

    async def _part(self, uid, uw, lists: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        rep = (await loop.run_in_executor(self.executor, self.engine.user_repr, uid, uw))[0]
        return np.concatenate([rep, lists]) if len(lists) else rep

    async def stored_user_repr(
        self, user_id: int, digest: str, fetch: Callable[[], Awaitable[dict]]
    ) -> tuple[np.ndarray, bool]:
        """(user part, hit) of a user whose current stored features have `digest`: from the
        cache without fetching them, or fetched, encoded and run through the user tower."""

        async def compute() -> np.ndarray:
            return await self._part(*self.encoder.encode_stored_user(await fetch(), user_id))

        return await self.cache.get_or_compute(
            stored_user_key(self.digest, user_id, digest), compute
        )

    async def score(self, user_repr, item_ids, item_w, deadline: float | None) -> Scores:
        """Candidate rows in jobs of at most max_batch_rows, scored with other requests' rows."""
        step = self.max_batch_rows
        jobs = [
            ScoreJob(user_repr, item_ids[a : a + step], item_w[a : a + step])
            for a in range(0, len(item_ids), step)
        ]
        queued = time.time_ns()
        try:
            parts = await asyncio.gather(*(self.batcher.submit(j, deadline) for j in jobs))
        finally:
            if tracing.enabled():
                _trace_jobs(jobs, queued)
        if len(parts) == 1:
            return parts[0]
        return Scores(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in ("pctr", "pcvr", "pctcvr"))
        )


def _trace_jobs(jobs: list[ScoreJob], queued: int) -> None:
    """Each job's wait and its batch's run as spans of the request. The batcher stays ignorant of
    tracing: the wait is the time from submit until its batch's run began (the two timestamps of
    one clock, the second taken in `_run_batch`), made into spans here, on the request's side,
    once the job is done; the run is shared with the other requests' rows in that batch. A job
    never run (its deadline passed, or this request's) waited until now."""
    for j in jobs:
        if j.ran is None:
            tracing.interval("batch_wait", queued, time.time_ns(), rows=len(j.item_ids))
            continue
        start, end, batch_rows = j.ran
        tracing.interval("batch_wait", queued, start, rows=len(j.item_ids))
        tracing.interval("model_run", start, end, rows=len(j.item_ids), batch_rows=batch_rows)


class ModelSlot:
    def __init__(self, model: ServedModel):
        model.start()
        self.current = model
        self._closing: set[asyncio.Task] = set()

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[ServedModel]:
        model = self.current
        model.leases += 1
        try:
            yield model
        finally:
            model.leases -= 1
            if model.retired and model.leases == 0:
                self._close_later(model)

    def swap(self, new: ServedModel) -> ServedModel:
        """Serve `new` from now on; the old version closes once its last request is done."""
        new.start()
        old, self.current = self.current, new
        old.retired = True
        if old.leases == 0:
            self._close_later(old)
        return old

    def retire(self) -> None:
        """Serve nothing more from this slot: its version closes once its last request is
        done (an arms config that no longer names it)."""
        model = self.current
        model.retired = True
        if model.leases == 0:
            self._close_later(model)

    def _close_later(self, model: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(model.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await self.current.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
