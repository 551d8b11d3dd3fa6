"""Rows from many requests -> one run. Knows nothing of ONNX or HTTP (standard library only).

The unit is rows, not requests: a run takes queued jobs, oldest first, while their rows fit in
`max_rows` (a single larger job runs alone; callers split what must fit). When nothing else is
queued a job runs at once: there is no fixed wait, so batching costs an idle server nothing and
grows by itself under load, while one run is in flight. `run_batch(list[In]) -> list[Out]` runs
in the given executor, never on the event loop, and must return one output per input: anything
else, or an exception, fails every job of that run loudly and the batcher keeps serving.

Who starts the next run. The runs are dispatched from the executor's thread itself: when a run
ends, the next batch is taken there and then (handing the thread to any other work queued on the
executor first, such as a user-tower run), never by a task of the event loop. Under load the
loop always has ready callbacks (requests to decode, responses to write), and a dispatcher on
the loop would wait behind them after every run while the scorer idled: measured here, that
wait kept both the loop and the scorer near 60% busy at 8 callers (docs/benchmarks.md). Results
go back to the loop with `call_soon_threadsafe`, which is the only thing the loop does for a run.

Deadlines: a job may carry one (the event loop's clock, `time.monotonic`). A job whose deadline
passed while it was queued gets `DeadlineExceeded` and is not run, so a late request costs no
model time. The batcher measures what it runs (`rows_per_s`, a moving average over runs) so
admission can tell how long the rows already queued will take.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Generic, NamedTuple, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
log = logging.getLogger("service.batcher")


class _Queued(NamedTuple):
    job: Any
    rows: int
    fut: asyncio.Future
    deadline: float | None  # time.monotonic(), the event loop's clock; None: no deadline


class BatcherClosed(RuntimeError):
    pass


class DeadlineExceeded(TimeoutError):
    """The job's deadline passed while it waited; it was not run."""


def _closed(*args: Any) -> Any:
    raise BatcherClosed("the batcher is closed")


def _settle(queued: list[_Queued], outs: list | None, error: BaseException | None) -> None:
    """On the loop: each job's result (or the run's error), unless its caller gave up."""
    for i, q in enumerate(queued):
        if q.fut.done():
            continue
        if error is not None:
            q.fut.set_exception(error)
        else:
            q.fut.set_result(outs[i])


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        rows_of: Callable[[In], int],
        max_rows: int,
        executor: Executor | None = None,
    ):
        self._run_batch, self._rows_of, self.max_rows = run_batch, rows_of, max_rows
        self._own = executor is None  # a thread of its own, shut down at close
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="batcher")
        self._lock = threading.Lock()  # the queue, pending_rows and _dispatching
        self._queue: collections.deque[_Queued] = collections.deque()
        self._dispatching = False  # a dispatch is queued on, or running in, the executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained: asyncio.Event | None = None  # set while no dispatch is under way
        self._closed = False
        self.pending_rows = 0
        self.rows_per_s: float | None = None  # None until a run has been timed
        self.expired = 0  # jobs dropped at their deadline, never run
        self.recent_rows: collections.deque[int] = collections.deque(maxlen=256)  # per run

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._drained = asyncio.Event()
        self._drained.set()

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one timed run into `rows_per_s` (also used to seed it from a warm-up run)."""
        if rows <= 0 or seconds <= 0:
            return
        rate = rows / seconds
        self.rows_per_s = rate if self.rows_per_s is None else 0.8 * self.rows_per_s + 0.2 * rate

    async def submit(self, job: In, deadline: float | None = None) -> Out:
        if self._closed or self._loop is None:
            raise BatcherClosed("the batcher is closed" if self._closed else "not started")
        fut = self._loop.create_future()
        rows = self._rows_of(job)
        with self._lock:
            self._queue.append(_Queued(job, rows, fut, deadline))
            self.pending_rows += rows
            start, self._dispatching = not self._dispatching, True
        if start:
            self._drained.clear()
            self._executor.submit(self._dispatch)
        return await fut

    async def close(self) -> None:
        """Finish what is queued, then stop, and let go of `run_batch` and `rows_of`."""
        self._closed = True
        if self._drained is not None:
            await self._drained.wait()
        if self._own:
            self._executor.shutdown(wait=False)
        # run_batch is usually a bound method of the object that holds this batcher: a cycle,
        # which only a full garbage collection frees. Dropping it frees a retired model version
        # (its ONNX sessions, its item table) with its last reference (loadtest/table_memory.py:
        # without this, every table reload kept the old version's 40-60 MB and more).
        self._run_batch = self._rows_of = _closed

    # ---- on the executor's thread -----------------------------------------------------------
    def _take(self) -> list[_Queued]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_rows:
            item = self._queue.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    def _dispatch(self) -> None:
        """Run one batch, then queue the next dispatch behind whatever else the executor has
        (so a user-tower run never waits for the whole queue), or stop when nothing is left."""
        with self._lock:
            if not self._queue:
                self._dispatching = False
                self._call(self._set_drained)
                return
            batch = self._take()
            self.pending_rows -= sum(b.rows for b in batch)
        try:
            self._run(batch)
        finally:
            self._executor.submit(self._dispatch)

    def _run(self, batch: list[_Queued]) -> None:
        now = time.monotonic()
        live, late = [], []
        for b in batch:  # callers that gave up, or whose deadline passed, are not run
            if b.fut.done():
                continue
            if b.deadline is not None and b.deadline <= now:
                late.append(b)
                continue
            live.append(b)
        if late:
            self.expired += len(late)
            self._call(_settle, late, None, DeadlineExceeded("deadline passed while queued"))
        if not live:
            return
        try:
            t0 = time.perf_counter()
            outs = self._run_batch([b.job for b in live])
            rows = sum(b.rows for b in live)
            self.observe(rows, time.perf_counter() - t0)
            self.recent_rows.append(rows)
            if len(outs) != len(live):
                raise RuntimeError(f"run_batch returned {len(outs)} outputs for {len(live)} inputs")
        except Exception as e:  # every waiting job gets it; the batcher goes on
            log.exception("batch of %d jobs failed", len(live))
            self._call(_settle, live, None, e)
            return
        self._call(_settle, live, outs, None)

    def _call(self, fn: Callable, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _set_drained(self) -> None:
        """On the loop: drained, unless a submit started a new dispatch in the meantime."""
        with self._lock:
            idle = not self._dispatching
        if idle:
            self._drained.set()
