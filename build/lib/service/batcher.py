"""Rows from many requests -> one run. Knows nothing of ONNX or HTTP (standard library only).

The unit is rows, not requests: a run takes queued jobs, oldest first, while their rows fit in
`max_rows` (a single larger job runs alone; callers split what must fit). When nothing else is
queued a job runs at once: there is no fixed wait, so batching costs an idle server nothing and
grows by itself under load, while one run is in flight. `run_batch(list[In]) -> list[Out]` runs
in the given executor, never on the event loop, and must return one output per input: anything
else, or an exception, fails every job of that run loudly and the loop keeps serving.

Deadlines: a job may carry one (the event loop's clock). A job whose deadline passed while it
was queued gets `DeadlineExceeded` and is not run, so a late request costs no model time. The
batcher measures what it runs (`rows_per_s`, a moving average over runs) so admission can tell
how long the rows already queued will take.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Generic, NamedTuple, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
log = logging.getLogger("service.batcher")


class _Queued(NamedTuple):
    job: Any
    rows: int
    fut: asyncio.Future
    deadline: float | None  # the event loop's clock; None: no deadline


class BatcherClosed(RuntimeError):
    pass


class DeadlineExceeded(TimeoutError):
    """The job's deadline passed while it waited; it was not run."""


def _closed(*args: Any) -> Any:
    raise BatcherClosed("the batcher is closed")


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        rows_of: Callable[[In], int],
        max_rows: int,
        executor: Executor | None = None,
    ):
        self._run_batch, self._rows_of, self.max_rows = run_batch, rows_of, max_rows
        self._executor = executor
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.pending_rows = 0
        self.rows_per_s: float | None = None  # None until a run has been timed
        self.expired = 0  # jobs dropped at their deadline, never run
        self.recent_rows: collections.deque[int] = collections.deque(maxlen=256)  # per run

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one timed run into `rows_per_s` (also used to seed it from a warm-up run)."""
        if rows <= 0 or seconds <= 0:
            return
        rate = rows / seconds
        self.rows_per_s = rate if self.rows_per_s is None else 0.8 * self.rows_per_s + 0.2 * rate

    async def submit(self, job: In, deadline: float | None = None) -> Out:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        fut = asyncio.get_running_loop().create_future()
        rows = self._rows_of(job)
        self._queue.append(_Queued(job, rows, fut, deadline))
        self.pending_rows += rows
        self._wake.set()
        return await fut

    async def close(self) -> None:
        """Finish what is queued, then stop, and let go of `run_batch` and `rows_of`."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        # run_batch is usually a bound method of the object that holds this batcher: a cycle,
        # which only a full garbage collection frees. Dropping it frees a retired model version
        # (its ONNX sessions, its item table) with its last reference (loadtest/table_memory.py:
        # without this, every table reload kept the old version's 40-60 MB and more).
        self._run_batch = self._rows_of = _closed

    def _take(self) -> list[_Queued]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_rows:
            item = self._queue.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            self.pending_rows -= sum(b.rows for b in batch)
            now = loop.time()
            live = []
            for b in batch:  # callers that gave up, or whose deadline passed, are not run
                if b.fut.done():
                    continue
                if b.deadline is not None and b.deadline <= now:
                    self.expired += 1
                    b.fut.set_exception(DeadlineExceeded("deadline passed while queued"))
                    continue
                live.append(b)
            if not live:
                continue
            try:
                t0 = time.perf_counter()
                outs = await loop.run_in_executor(
                    self._executor, self._run_batch, [b.job for b in live]
                )
                rows = sum(b.rows for b in live)
                self.observe(rows, time.perf_counter() - t0)
                self.recent_rows.append(rows)
                if len(outs) != len(live):
                    raise RuntimeError(
                        f"run_batch returned {len(outs)} outputs for {len(live)} inputs"
                    )
            except Exception as e:  # every waiting job gets it; the loop goes on
                log.exception("batch of %d jobs failed", len(live))
                for b in live:
                    if not b.fut.done():
                        b.fut.set_exception(e)
                continue
            for b, out in zip(live, outs, strict=True):
                if not b.fut.done():
                    b.fut.set_result(out)
