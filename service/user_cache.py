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


def data_error(e: BaseException) -> bool:
    """A reply about the value at one key (it holds another Redis type: WRONGTYPE), not a fault
    of the store: the server answered. One key's data must never open a breaker that every
    other key's reads go through."""
    from redis.exceptions import ResponseError

    return isinstance(e, ResponseError) and str(e).startswith("WRONGTYPE")


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


class Breaker:
    """A circuit breaker: after `failures` errors in a row Redis is left alone for `reset_s`
    (every call a quick miss), then one call probes it; a success closes the circuit again.
    So a hung or dead Redis costs a few timeouts, not one per request."""

    def __init__(self, failures: int = 3, reset_s: float = 1.0, clock=time.monotonic):
        self.failures, self.reset_s, self.clock = failures, reset_s, clock
        self.errors_in_row = 0
        self.open_until: float | None = None  # None: closed
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def allow(self) -> bool:
        if self.open_until is None:
            return True
        if self.probing or self.clock() < self.open_until:
            return False
        self.probing = True  # half open: this one call tries Redis
        return True

    def success(self) -> bool:
        """Record a success; True when it closed an open circuit."""
        was_open = self.open_until is not None
        self.errors_in_row, self.open_until, self.probing = 0, None, False
        return was_open

    def failure(self) -> bool:
        """Record a failure; True when it opened the circuit (or kept a probe's open)."""
        self.errors_in_row += 1
        if self.probing or self.errors_in_row >= self.failures:
            opened = self.open_until is None
            self.open_until, self.probing = self.clock() + self.reset_s, False
            return opened
        return False


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def redis_client(url: str, *, sync: bool = False, **kwargs):
    """A client of `url` (asyncio's, or with `sync` the blocking one): `redis://`, `rediss://` or
    `unix://` for one Redis (redis-py's forms), `redis+cluster://host:port` (`rediss+cluster://`
    with TLS) for a Redis Cluster, the node named the first one asked for the slot map
    (redis-py's cluster client takes `redis://` only: the scheme is what says cluster). The
    cache tier, the user store and its loader (ranker/users.py) all read their URLs here."""
    if sync:
        import redis
        from redis.cluster import RedisCluster
    else:
        import redis.asyncio as redis
        from redis.asyncio.cluster import RedisCluster

    scheme, sep, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(scheme.removesuffix("+cluster") + sep + rest, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


class Initialized:
    """A client's first initialize(): a cluster client's learns the slot map (CLUSTER SLOTS,
    COMMAND), more round trips than one call's timeout may allow on a busy host, so it is a task
    of its own that a timed-out call leaves running for the next (a failed one is started
    again). One Redis's does nothing. Only the first fetch is covered: after a connection error
    redis-py refreshes the slot map inside the next command, under that call's timeout (a call
    that runs out of time is a miss, and the refresh goes on in the one after)."""

    def __init__(self, client) -> None:
        self.client = client
        self._task: asyncio.Task | None = None
        self._done = False

    async def __call__(self) -> None:
        if self._done:  # every call after the first: nothing to wait for
            return
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._task = asyncio.get_running_loop().create_task(self.client.initialize())
        await asyncio.shield(task)
        self._done = True

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])


class RedisTier:
    """Redis behind hard timeouts and a circuit breaker. Reads wait at most `timeout_ms`; writes
    go to the background (bounded), so a slow Redis never delays a response by more than one
    read timeout, and not at all while the circuit is open. The client reconnects by itself:
    after a restart the breaker's probe finds it again. `on_event(op, outcome)` feeds metrics:
    op get/set/breaker, outcome ok/error/skipped/open/closed."""

    def __init__(
        self,
        url: str,
        timeout_ms: int,
        ttl_s: float,
        breaker: Breaker | None = None,
        max_pending_writes: int = 1000,
        on_event: Callable[[str, str], None] = lambda op, outcome: None,
    ):
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url, self.timeout_s = redacted(url), timeout_ms / 1000
        # One immediate retry: a connection Redis dropped on restart fails once, then the retry
        # reconnects (a cluster client also asks for the slot map again first). The whole call
        # stays under the hard timeout regardless.
        self.client = redis_client(
            url,  # the real one; self.url is for logs
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self.ttl_ms = int(ttl_s * 1000)
        self.breaker = breaker or Breaker()
        self.max_pending_writes, self.on_event = max_pending_writes, on_event
        self._writes: set[asyncio.Task] = set()
        self._connected = Initialized(self.client)

    async def get(self, key: str) -> bytes | None:
        return await self._call("get", self.client.get, key)

    def put(self, key: str, blob: bytes) -> None:
        """Write in the background; dropped (and counted) when too many writes are pending."""
        if len(self._writes) >= self.max_pending_writes:
            self.on_event("set", "skipped")
            return
        task = asyncio.get_running_loop().create_task(
            self._call("set", self.client.set, key, blob, px=self.ttl_ms)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _call(self, op: str, fn, *args, **kwargs):
        if not self.breaker.allow():
            self.on_event(op, "skipped")
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._connected()
                out = await fn(*args, **kwargs)
        except Exception as e:  # a Redis fault is a miss, never an error for the client
            if data_error(e):  # this key's value, not the tier: a miss, the breaker untouched
                self.on_event(op, "bad_value")
                log.warning("redis tier: %s %s holds another type: a miss", op, args[:1])
                return None
            self.on_event(op, "error")
            if self.breaker.failure():
                self.on_event("breaker", "open")
                log.warning(
                    "redis tier at %s unavailable (%s: %s): skipping it for %.1f s, serving "
                    "from the process cache and the user tower",
                    self.url,
                    type(e).__name__,
                    str(e) or "timeout",
                    self.breaker.reset_s,
                )
            return None
        self.on_event(op, "ok")
        if self.breaker.success():
            self.on_event("breaker", "closed")
            log.warning("redis tier at %s answers again: using it", self.url)
        return out

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=1.0)
        await self._connected.close()
        await self.client.aclose()


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
