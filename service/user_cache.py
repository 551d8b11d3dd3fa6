"""The user representation cache: an in-process LRU with TTL, and Redis as a shared tier.

Key layout: `ranker:u:<model digest, 24 hex>:<blake2b of the user id and its encoded rows, 24
hex>`, or of the user id and its stored features' digest for a user read from the store. The
model part is the content digest of the model (features/manifest.py), never its folder name, so two
exports that share a name never share vectors and a new model never reads an old one; changed
features never reuse a stale vector. Keys have a fixed size whatever the
user id. Values written to Redis carry the model digest, the vector length and the dtype, and
are checked when read: a value that does not match is a miss, never used. A Redis error or
timeout is a miss too (and counted): the user tower runs instead; a circuit breaker keeps a
dead or hung Redis from costing a timeout per request. The Redis tier is one Redis or a Redis
Cluster (`redis+cluster://`, see redis_client): keys hold no hash tag, so they spread over its
slots.

Concurrent misses for one key compute once (single flight): the computation is a task of its
own, so a caller that gives up (its deadline, a disconnect) never cancels it under the others,
and each waiter gets its result or its exception. The process tier is bounded in entries and
in bytes.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable

import numpy as np

from service import tracing
from service.redis_guard import Breaker, GuardedRedis, RedisDataError, RedisUnavailable

log = logging.getLogger("service.user_cache")
MAGIC = b"RNK1"


def user_key(
    model: str, user_id: str | int, ids: np.ndarray, vals: np.ndarray, lists: bytes = b""
) -> str:
    """`lists`: the raw cross lists the user part carries (service/encoding.py), which hashed
    rows alone do not determine."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{type(user_id).__name__}:{user_id}".encode("utf-8", "surrogatepass"))
    h.update(b"\0" + ids.tobytes() + vals.tobytes() + lists)
    return f"ranker:u:{model[:24]}:{h.hexdigest()}"


def stored_user_key(model: str, user_id: int, digest: str) -> str:
    """The key of a user whose features come from the store: their digest stands for them
    (equal digests, equal features), so a hit needs no feature fetch (user_store.py). A
    namespace of its own: never equal to a key of features given in a request."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"store:{user_id}:{digest}".encode())
    return f"ranker:u:{model[:24]}:{h.hexdigest()}"


ENTRY_OVERHEAD = 200  # bytes an entry costs beyond its key and vector (dict, tuple, array header)


class LocalLRU:
    """LRU with a TTL, bounded in entries and in bytes (keys, vectors and overhead)."""

    def __init__(self, size: int, ttl_s: float, max_bytes: int = 1 << 30):
        self.size, self.ttl_s, self.max_bytes = size, ttl_s, max_bytes
        self.bytes = 0
        self._data: collections.OrderedDict[str, tuple[float, np.ndarray, int]] = (
            collections.OrderedDict()
        )

    def get(self, key: str) -> np.ndarray | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: str, vec: np.ndarray) -> None:
        cost = len(key) + vec.nbytes + ENTRY_OVERHEAD
        if self.size <= 0 or cost > self.max_bytes:
            return
        if key in self._data:
            self._drop(key)
        self._data[key] = (time.monotonic() + self.ttl_s, vec, cost)
        self.bytes += cost
        while len(self._data) > self.size or self.bytes > self.max_bytes:
            self._drop(next(iter(self._data)))

    def _drop(self, key: str) -> None:
        self.bytes -= self._data.pop(key)[2]

    def __len__(self) -> int:
        return len(self._data)


def encode_value(model: str, vec: np.ndarray) -> bytes:
    v = model.encode()
    vec = np.ascontiguousarray(vec, dtype=np.float32)
    return MAGIC + struct.pack("<HI", len(v), vec.size) + v + vec.tobytes()


def decode_value(blob: bytes, model: str, dim: int) -> np.ndarray | None:
    """The vector, or None when the value is not this model's float32 vector of `dim`."""
    try:
        if blob[:4] != MAGIC:
            return None
        vlen, size = struct.unpack_from("<HI", blob, 4)
        start = 4 + struct.calcsize("<HI")
        if blob[start : start + vlen].decode() != model or size != dim:
            return None
        data = blob[start + vlen :]
        if len(data) != 4 * dim:
            return None
        vec = np.frombuffer(data, dtype=np.float32)
        return vec if np.isfinite(vec).all() else None
    except (struct.error, UnicodeDecodeError):
        return None


class RedisTier:
    """Redis behind hard timeouts and a circuit breaker (service/redis_guard.py). Reads wait at
    most `timeout_ms`; writes go to the background (bounded), so a slow Redis never delays a
    response by more than one read timeout, and not at all while the circuit is open. Every
    failure is a miss, never an error for the client; a key holding another Redis type is a miss
    that leaves the breaker alone. `on_event(op, outcome)` feeds metrics: op get/set/breaker,
    outcome ok/error/skipped/bad_value/open/closed."""

    def __init__(
        self,
        url: str,
        timeout_ms: int,
        ttl_s: float,
        breaker: Breaker | None = None,
        max_pending_writes: int = 1000,
        on_event: Callable[[str, str], None] = lambda op, outcome: None,
    ):
        self.redis = GuardedRedis(
            url,
            timeout_ms,
            breaker,
            on_event,
            what="redis tier",
            meanwhile="serving from the process cache and the user tower",
        )
        self.ttl_ms = int(ttl_s * 1000)
        self.max_pending_writes, self.on_event = max_pending_writes, on_event
        self._writes: set[asyncio.Task] = set()

    async def get(self, key: str) -> bytes | None:
        return await self._call("get", self.redis.client.get, key)

    def put(self, key: str, blob: bytes) -> None:
        """Write in the background; dropped (and counted) when too many writes are pending."""
        if len(self._writes) >= self.max_pending_writes:
            self.on_event("set", "skipped")
            return
        task = asyncio.get_running_loop().create_task(
            self._call("set", self.redis.client.set, key, blob, px=self.ttl_ms)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _call(self, op: str, fn, *args, **kwargs):
        try:
            return await self.redis.call(op, fn, *args, **kwargs)
        except RedisUnavailable:  # a Redis fault is a miss, never an error for the client
            return None
        except RedisDataError:  # this key's value, not the tier: a miss, the breaker untouched
            self.on_event(op, "bad_value")
            log.warning("redis tier: %s %s holds another type: a miss", op, args[:1])
            return None

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=1.0)
        await self.redis.close()


class UserCache:
    """local -> redis -> compute, with single flight per key. `model` is the model's content
    digest. `on_event(tier, outcome)` is called for metrics: tier "local" or "redis", outcome
    "hit" or "miss"."""

    def __init__(
        self,
        model: str,
        dim: int,
        local: LocalLRU,
        redis: RedisTier | None,
        on_event: Callable[[str, str], None] = lambda tier, outcome: None,
    ):
        self.model, self.dim = model, dim
        self.local, self.redis, self.on_event = local, redis, on_event
        self._inflight: dict[str, asyncio.Task] = {}

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[np.ndarray]]
    ) -> tuple[np.ndarray, bool]:
        """(vector, hit) where hit means the user tower did not run for this request."""
        vec = self.local.get(key)
        self.on_event("local", "miss" if vec is None else "hit")
        if vec is not None:
            tracing.annotate(tier="local", hit=True)
            return vec, True
        task = self._inflight.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fill(key, compute))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        # shield: this caller's cancellation (its deadline) stops its wait, not the work
        vec, hit = await asyncio.shield(task)
        # computed: the user tower ran, for this request or for the one whose run it joined
        tracing.annotate(tier="redis" if hit else "computed", hit=hit or shared)
        return vec, hit or shared

    def _finished(self, key: str, task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: with every waiter gone it must not be logged as lost

    async def _fill(
        self, key: str, compute: Callable[[], Awaitable[np.ndarray]]
    ) -> tuple[np.ndarray, bool]:
        if self.redis is not None:
            blob = await self.redis.get(key)
            vec = None if blob is None else decode_value(blob, self.model, self.dim)
            self.on_event("redis", "miss" if vec is None else "hit")
            if vec is not None:
                self.local.put(key, vec)
                return vec, True
        vec = await compute()
        self.local.put(key, vec)
        if self.redis is not None:
            self.redis.put(key, encode_value(self.model, vec))
        return vec, False
