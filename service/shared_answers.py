"""/feedback across workers and replicas: the answers outcomes are reported against, in Redis.

With RANKER_FEEDBACK_SHARED, every answer's returned items (model version, arm, ids and
predictions) are written, off the request path, to the shared Redis tier (RANKER_REDIS_URL) as
one hash per answer, `ranker:answer:<request_id>`, expiring after RANKER_FEEDBACK_WINDOW_S. An
event reaching any worker or replica is then counted against the answer whoever gave it, once:
what was reported lives in the same hash (`c:<position>` a click, `v:<position>` a conversion),
set by a Lua script that checks and sets in one step (a click counted once however many
replicas it reaches at once; a conversion only after its click), one key per script, so a Redis
Cluster serves it too.

Writes are dropped (counted) when too many are pending or Redis is failing (its breaker open):
an answer not written is `late` for the events of other processes, never a failure of /rank.
A /feedback that cannot reach Redis is a 503: its events are not counted twice or lost
silently, the caller retries.

Memory in Redis: 20.9 bytes per returned item (an id and three float32 predictions; measured
with MEMORY USAGE on answers of 500 items) and a few for each event, for as long as the window:
200 answers a second of 500 items kept for an hour are about 7.5 GB; a shorter window or `top_k`
keeps it small (docs/loop.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import msgspec
import numpy as np

from service.redis_guard import Breaker, GuardedRedis

log = logging.getLogger("service.shared_answers")
PREFIX = "ranker:answer:"
# KEYS[1]: the answer; ARGV[1]: c (click) or v (conversion); ARGV[2]: the item's position
MARK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'late' end
if ARGV[1] == 'v' and redis.call('HEXISTS', KEYS[1], 'c:' .. ARGV[2]) == 0 then
  return 'without_click'
end
if redis.call('HSETNX', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 1) == 1 then return 'counted' end
return 'duplicate'
"""


class SharedAnswers:
    def __init__(
        self,
        url: str,
        timeout_ms: int,
        window_s: float,
        on_event: Callable[[str, str], None] = lambda op, outcome: None,
        breaker: Breaker | None = None,
        max_pending_writes: int = 1000,
    ):
        self.redis = GuardedRedis(
            url,
            timeout_ms,
            breaker,
            on_event,
            what="feedback store",
            meanwhile="answers are not shared: other processes' events for them are late",
        )
        self.ttl_s = max(1, int(window_s))
        self.on_event, self.max_pending_writes = on_event, max_pending_writes
        self._writes: set[asyncio.Task] = set()

    # ---- answers ------------------------------------------------------------------------------
    def remember(self, request_id: str, version: str, arm: str, ids, pctr, pcvr, pctcvr) -> None:
        """Write an answer in the background; dropped (counted) when too many are pending."""
        if len(self._writes) >= self.max_pending_writes:
            self.on_event("remember", "skipped")
            return
        blob = msgspec.msgpack.encode(
            [
                version,
                arm,
                np.asarray(ids).tolist(),
                np.asarray(pctr, np.float32).tobytes(),
                np.asarray(pcvr, np.float32).tobytes(),
                np.asarray(pctcvr, np.float32).tobytes(),
            ]
        )
        task = asyncio.get_running_loop().create_task(self._write(PREFIX + request_id, blob))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, blob: bytes) -> None:
        async def both():
            async with self.redis.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, "a", blob)
                pipe.expire(key, self.ttl_s)
                return await pipe.execute()

        # RedisUnavailable, a data error: counted by the guard (its on_event), never raised
        with contextlib.suppress(Exception):
            await self.redis.call("remember", both)

    async def answers(self, request_ids: list[str]) -> dict[str, tuple | None]:
        """Each request id's answer (version, arm, ids, pctr, pcvr, pctcvr), None where Redis
        has none (never written, or expired); RedisUnavailable when it cannot be asked."""

        async def get_all():
            async with self.redis.client.pipeline(transaction=False) as pipe:
                for rid in request_ids:
                    pipe.hget(PREFIX + rid, "a")
                return await pipe.execute()

        blobs = await self.redis.call("answers", get_all) if request_ids else []
        out: dict[str, tuple | None] = {}
        for rid, blob in zip(request_ids, blobs, strict=True):
            out[rid] = None if blob is None else _decode(blob)
        return out

    async def mark(self, marks: list[tuple[str, str, int]]) -> list[str]:
        """(request id, kind, position) of each event -> counted, duplicate, without_click or
        late, in order: one request's events one after another (a click before its conversion
        in one body), different requests' at once."""
        out: list[str | None] = [None] * len(marks)
        chains: dict[str, list[int]] = {}
        for k, (rid, _, _) in enumerate(marks):
            chains.setdefault(rid, []).append(k)

        async def chain(indices: list[int]) -> None:
            for k in indices:
                rid, kind, pos = marks[k]
                tag = "c" if kind == "click" else "v"
                got = await self.redis.call(
                    "mark", self.redis.client.eval, MARK, 1, PREFIX + rid, tag, pos
                )
                out[k] = got.decode() if isinstance(got, bytes) else str(got)

        await asyncio.gather(*(chain(ix) for ix in chains.values()))
        return out  # type: ignore[return-value]

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)
        await self.redis.close()


def _decode(blob: bytes) -> tuple:
    version, arm, ids, pctr, pcvr, pctcvr = msgspec.msgpack.decode(blob)
    f32 = lambda b: np.frombuffer(b, np.float32)  # noqa: E731
    return version, arm, np.asarray(ids), f32(pctr), f32(pcvr), f32(pctcvr)
