"""Rows from many requests -> one run. Knows nothing of ONNX or HTTP (standard library only).

The unit is rows, not requests: a run takes queued jobs, oldest first, while their rows fit in
`max_rows` (a single larger job runs alone; callers split what must fit). When nothing else is
queued a job runs at once: there is no fixed wait, so batching costs an idle server nothing and
grows by itself under load, while one run is in flight. `run_batch(list[In]) -> list[Out]` runs
in the given executor, never on the event loop, and must return one output per input: anything
else, or an exception, fails every job of that run loudly and the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
log = logging.getLogger("service.batcher")


class BatcherClosed(RuntimeError):
    pass


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
        self._queue: collections.deque[tuple[In, int, asyncio.Future]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.pending_rows = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def submit(self, job: In) -> Out:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        fut = asyncio.get_running_loop().create_future()
        rows = self._rows_of(job)
        self._queue.append((job, rows, fut))
        self.pending_rows += rows
        self._wake.set()
        return await fut

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def _take(self) -> list[tuple[In, int, asyncio.Future]]:
        batch, rows = [self._queue.popleft()], 0
        rows = batch[0][1]
        while self._queue and rows + self._queue[0][1] <= self.max_rows:
            item = self._queue.popleft()
            batch.append(item)
            rows += item[1]
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
            live = [b for b in batch if not b[2].done()]  # callers that gave up are not run
            self.pending_rows -= sum(b[1] for b in batch)
            if not live:
                continue
            try:
                outs = await loop.run_in_executor(
                    self._executor, self._run_batch, [b[0] for b in live]
                )
                if len(outs) != len(live):
                    raise RuntimeError(
                        f"run_batch returned {len(outs)} outputs for {len(live)} inputs"
                    )
            except Exception as e:  # every waiting job gets it; the loop goes on
                log.exception("batch of %d jobs failed", len(live))
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, _, fut), out in zip(live, outs, strict=True):
                if not fut.done():
                    fut.set_result(out)
