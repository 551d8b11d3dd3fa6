"""Redis as the service reaches it: a client of one URL (one Redis or a Redis Cluster), each call
under a hard timeout and a circuit breaker. The user cache's tier and the user store both call
through `GuardedRedis`, so they judge a call the same way:

- the store's own failures (no connection, a timeout, a server error) count toward the breaker;
  after `failures` in a row the store is left alone for `reset_s` (every call skipped at once),
  then one call probes it: so a hung or dead Redis costs a few timeouts, not one per request;
- a reply about the value at one key (it holds another Redis type: WRONGTYPE) is that key's
  problem, never the store's: the server answered, and one key's data must never open a breaker
  that every other key's reads go through. It is raised as `RedisDataError` for the caller to
  answer as its own contract says, and leaves the breaker as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("service.redis")

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class RedisUnavailable(Exception):
    """The call was not answered: skipped while the breaker is open, or failed (the message says
    which)."""


class RedisDataError(Exception):
    """The value at the key is not of the type the call reads: that key's problem."""


def data_error(e: BaseException) -> bool:
    """A reply about the value at one key (WRONGTYPE), not a fault of the store."""
    from redis.exceptions import ResponseError

    return isinstance(e, ResponseError) and str(e).startswith("WRONGTYPE")


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


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


class Breaker:
    """A circuit breaker: after `failures` errors in a row the store is left alone for `reset_s`
    (every call skipped), then one call probes it; a success closes the circuit again."""

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


class GuardedRedis:
    """One Redis or Redis Cluster at `url`, every call within `timeout_ms` and behind `breaker`.
    The client reconnects by itself (one immediate retry: a connection Redis dropped on restart
    fails once, then the retry reconnects; a cluster client asks for the slot map again first),
    and the whole call stays under the hard timeout regardless. `on_event(op, outcome)` feeds
    metrics: outcome ok, error or skipped per op, and op `breaker` with open or closed.
    `what` names the store in logs, `meanwhile` says what serving does while it is skipped."""

    def __init__(
        self,
        url: str,
        timeout_ms: int,
        breaker: Breaker | None = None,
        on_event: Callable[[str, str], None] = lambda op, outcome: None,
        what: str = "redis",
        meanwhile: str = "",
    ):
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url, self.timeout_s = redacted(url), timeout_ms / 1000
        self.client = redis_client(
            url,  # the real one; self.url is for logs
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self.breaker = breaker or Breaker()
        self.on_event, self.what, self.meanwhile = on_event, what, meanwhile
        self._connected = Initialized(self.client)

    async def call(self, op: str, fn: Callable, *args, **kwargs):
        """`fn(*args, **kwargs)` of this client, awaited: its reply, or RedisUnavailable (skipped,
        or failed and counted toward the breaker), or RedisDataError (the key's value, not the
        store: the breaker is left as it was)."""
        if not self.breaker.allow():
            self.on_event(op, "skipped")
            raise RedisUnavailable(f"{self.what} at {self.url} is unavailable (retrying soon)")
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._connected()
                out = await fn(*args, **kwargs)
        except Exception as e:
            if data_error(e):
                raise RedisDataError(str(e)) from None
            self.on_event(op, "error")
            if self.breaker.failure():
                self.on_event("breaker", "open")
                log.warning(
                    "%s at %s unavailable (%s: %s): skipping it for %.1f s%s",
                    self.what,
                    self.url,
                    type(e).__name__,
                    str(e) or "timeout",
                    self.breaker.reset_s,
                    f", {self.meanwhile}" if self.meanwhile else "",
                )
            raise RedisUnavailable(f"{self.what} did not answer ({type(e).__name__})") from None
        self.on_event(op, "ok")
        if self.breaker.success():
            self.on_event("breaker", "closed")
            log.warning("%s at %s answers again: using it", self.what, self.url)
        return out

    async def close(self) -> None:
        await self._connected.close()
        await self.client.aclose()
