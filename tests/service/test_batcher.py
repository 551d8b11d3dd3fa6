"""service/batcher.py: rows from many requests in one run, failures, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batcher import Batcher, DeadlineExceeded


def test_batcher_scores_queued_jobs_in_one_run_and_splits_by_rows():
    seen: list[list[int]] = []
    gate = threading.Event()

    def run_batch(jobs):
        gate.wait(5)
        seen.append(list(jobs))
        return [j * 10 for j in jobs]

    async def go():
        b = Batcher(run_batch, rows_of=lambda j: j, max_rows=10, executor=ThreadPoolExecutor(1))
        b.start()
        first = asyncio.ensure_future(b.submit(1))  # runs at once, alone: nothing else queued
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit(j)) for j in (2, 3, 4, 5, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.gather(first, *rest)
        await b.close()
        return out

    assert asyncio.run(go()) == [10, 20, 30, 40, 50, 60]
    assert seen == [[1], [2, 3, 4], [5], [6]]  # rows 2+3+4 = 9 fit in 10; 9+5 would not


def test_batcher_fails_every_job_of_a_broken_run_and_keeps_serving():
    def run_batch(jobs):
        if 0 in jobs:
            raise ValueError("boom")
        return jobs

    async def go():
        b = Batcher(run_batch, rows_of=lambda j: 1, max_rows=4)
        b.start()
        with pytest.raises(ValueError):
            await b.submit(0)
        ok = await b.submit(7)
        await b.close()
        return ok

    assert asyncio.run(go()) == 7


def test_a_job_whose_deadline_passed_in_the_queue_is_never_run():
    ran: list[list[int]] = []

    def run_batch(jobs):
        time.sleep(0.05)
        ran.append(jobs)
        return jobs

    async def go():
        b = Batcher(run_batch, lambda j: 1, max_rows=1)
        b.start()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(b.submit(1))  # runs for 50 ms
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(b.submit(2, deadline=loop.time() + 0.01))
        fine = asyncio.ensure_future(b.submit(3, deadline=loop.time() + 5))
        assert await first == 1 and await fine == 3
        with pytest.raises(DeadlineExceeded):
            await late
        await b.close()
        return b

    b = asyncio.run(go())
    assert ran == [[1], [3]] and b.expired == 1 and b.rows_per_s is not None


def test_a_closed_batcher_lets_go_of_its_owner():
    """An owner whose bound method is the batcher's run_batch (as a served model version is) is
    freed with its last reference once the batcher closes: no cycle left for the collector."""
    import gc
    import weakref

    class Owner:
        def __init__(self):
            self.batcher = Batcher(self.run, rows_of=lambda j: 1, max_rows=4)

        def run(self, jobs):
            return jobs

    async def go():
        owner = Owner()
        owner.batcher.start()
        assert await owner.batcher.submit(3) == 3
        await owner.batcher.close()
        return weakref.ref(owner)

    gc.disable()
    try:
        ref = asyncio.run(go())
        assert ref() is None
    finally:
        gc.enable()
