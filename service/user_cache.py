"""The user representation cache: an in-process LRU with TTL, and Redis as a shared tier.

Keys carry the model version, the user id and a digest of the user's encoded features, so a new
model never reads an old vector and changed features never reuse a stale one. Values written to
Redis carry the model version, the vector length and the dtype, and are checked when read: a
value that does not match is a miss, never used. A Redis error or timeout is a miss too (and
counted): the user tower runs instead. Concurrent misses for one key compute once.
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

log = logging.getLogger("service.user_cache")
MAGIC = b"RNK1"


def user_key(version: str, user_id: str | int, ids: np.ndarray, vals: np.ndarray) -> str:
    digest = hashlib.blake2b(ids.tobytes() + vals.tobytes(), digest_size=12).hexdigest()
    return f"ranker:{version}:{type(user_id).__name__}:{user_id}:{digest}"


class LocalLRU:
    def __init__(self, size: int, ttl_s: float):
        self.size, self.ttl_s = size, ttl_s
        self._data: collections.OrderedDict[str, tuple[float, np.ndarray]] = (
            collections.OrderedDict()
        )

    def get(self, key: str) -> np.ndarray | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: str, vec: np.ndarray) -> None:
        if self.size <= 0:
            return
        self._data[key] = (time.monotonic() + self.ttl_s, vec)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def encode_value(version: str, vec: np.ndarray) -> bytes:
    v = version.encode()
    vec = np.ascontiguousarray(vec, dtype=np.float32)
    return MAGIC + struct.pack("<HI", len(v), vec.size) + v + vec.tobytes()


def decode_value(blob: bytes, version: str, dim: int) -> np.ndarray | None:
    """The vector, or None when the value is not this model's float32 vector of `dim`."""
    try:
        if blob[:4] != MAGIC:
            return None
        vlen, size = struct.unpack_from("<HI", blob, 4)
        start = 4 + struct.calcsize("<HI")
        if blob[start : start + vlen].decode() != version or size != dim:
            return None
        data = blob[start + vlen :]
        if len(data) != 4 * dim:
            return None
        vec = np.frombuffer(data, dtype=np.float32)
        return vec if np.isfinite(vec).all() else None
    except (struct.error, UnicodeDecodeError):
        return None


class RedisTier:
    def __init__(self, url: str, timeout_ms: int, ttl_s: float):
        import redis.asyncio as redis

        self.url = url
        t = timeout_ms / 1000
        self.client = redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t)
        self.ttl_ms = int(ttl_s * 1000)
        self.errors = 0

    async def get(self, key: str) -> bytes | None:
        try:
            return await self.client.get(key)
        except Exception as e:  # a Redis fault is a miss, never an error for the client
            self.errors += 1
            log.warning("redis get failed: %s", e)
            return None

    async def put(self, key: str, blob: bytes) -> None:
        try:
            await self.client.set(key, blob, px=self.ttl_ms)
        except Exception as e:
            self.errors += 1
            log.warning("redis set failed: %s", e)

    async def close(self) -> None:
        await self.client.aclose()


class UserCache:
    """local -> redis -> compute, with single flight per key. `on_event(tier, outcome)` is
    called for metrics: tier "local" or "redis", outcome "hit" or "miss"."""

    def __init__(
        self,
        version: str,
        dim: int,
        local: LocalLRU,
        redis: RedisTier | None,
        on_event: Callable[[str, str], None] = lambda tier, outcome: None,
    ):
        self.version, self.dim = version, dim
        self.local, self.redis, self.on_event = local, redis, on_event
        self._inflight: dict[str, asyncio.Future] = {}

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[np.ndarray]]
    ) -> tuple[np.ndarray, bool]:
        """(vector, hit) where hit means the user tower did not run for this request."""
        vec = self.local.get(key)
        self.on_event("local", "miss" if vec is None else "hit")
        if vec is not None:
            return vec, True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), True
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            vec, hit = await self._fill(key, compute)
            fut.set_result(vec)
            return vec, hit
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._inflight[key]

    async def _fill(
        self, key: str, compute: Callable[[], Awaitable[np.ndarray]]
    ) -> tuple[np.ndarray, bool]:
        if self.redis is not None:
            blob = await self.redis.get(key)
            vec = None if blob is None else decode_value(blob, self.version, self.dim)
            self.on_event("redis", "miss" if vec is None else "hit")
            if vec is not None:
                self.local.put(key, vec)
                return vec, True
        vec = await compute()
        self.local.put(key, vec)
        if self.redis is not None:
            await self.redis.put(key, encode_value(self.version, vec))
        return vec, False
