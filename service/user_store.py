"""Lean reads of the online user feature store (features/users.py: one Redis hash per user).

A request without user_features names its user by id; the user's stored features make its
representation. The read path is two commands at most, straight on redis-py's asyncio client:

1. `HGET ranker:user:<id> d`: the 32-byte digest of the user's current features. None means the
   store has no such user.
2. Only when the representation of that digest is in no cache tier: `HMGET ... d f`, the
   features themselves, checked against their digest.

The representation is cached by (model digest, user id, features digest) (user_cache.py), so a
cache hit needs no feature fetch: the one digest read proves the cached vector was computed from
the store's current features. `max_age_s` (RANKER_USER_MAX_AGE_S) is the staleness bound: a
user's digest checked within that many seconds is not read again, so a representation is never
computed from features older than the store's current ones by more than max_age_s (0, the
default: never older: every request reads the digest).

A store that fails or does not answer within `timeout_ms` is a 503 (the breaker then spares it
for a while): features that cannot be proven current are never used. The store may be one Redis
or a Redis Cluster (`redis+cluster://host:port`): each user is one hash, so its reads are
single-key commands, and users spread over the nodes.

`EmbeddedUserStore` answers the same two questions from a user table file loaded in the process
(features/user_table.py: the same records), for one machine without Redis; `open_store` picks
by RANKER_USER_STORE: a redis URL, or a file's path.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path

from features import users
from features.user_table import UserTable
from service.errors import StoreUnavailable
from service.redis_guard import Breaker, GuardedRedis, RedisDataError, RedisUnavailable

log = logging.getLogger("service.user_store")


class Changed(Exception):
    """The user's record changed between its digest read and its fetch: look it up again."""


class UserStore:
    def __init__(
        self,
        url: str,
        timeout_ms: int,
        max_age_s: float = 0.0,
        size: int = 100_000,
        breaker: Breaker | None = None,
        on_event: Callable[[str, str], None] = lambda op, outcome: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.redis = GuardedRedis(  # one Redis or a Redis Cluster (redis+cluster://)
            url,
            timeout_ms,
            breaker,
            on_event,
            what="user store",
            meanwhile="requests without user_features get 503",
        )
        self.url = self.redis.url  # (for logs: the password redacted)
        self.max_age_s, self.size, self.clock = max_age_s, size, clock
        self.on_event = on_event
        # user id -> (when its digest was read, the digest or None for an absent user)
        self._checked: collections.OrderedDict[int, tuple[float, str | None]] = (
            collections.OrderedDict()
        )

    async def digest(self, user_id: int) -> str | None:
        """The digest of the user's current features (None: no such user in the store), read
        unless read within max_age_s."""
        if self.max_age_s > 0:
            seen = self._checked.get(user_id)
            if seen is not None and self.clock() - seen[0] <= self.max_age_s:
                self._checked.move_to_end(user_id)
                self.on_event("check", "recent")
                return seen[1]
        now = self.clock()
        raw = await self._call("check", self.redis.client.hget, users.key(user_id), "d")
        digest = None if raw is None else raw.decode("ascii", "replace")
        self._remember(user_id, now, digest)
        return digest

    async def features(self, user_id: int, digest: str) -> dict:
        """The user's features, which must still be those of `digest` (else Changed)."""
        now = self.clock()
        d, blob = await self._call("fetch", self.redis.client.hmget, users.key(user_id), ["d", "f"])
        current = None if d is None else d.decode("ascii", "replace")
        if current == digest and blob is None:  # written without its features: unusable
            raise users.UserRecordError("it has a digest (d) but no features (f)")
        if current != digest:
            self._remember(user_id, now, current)
            raise Changed
        return users.decode(blob, expected=digest)  # UserRecordError: an unusable record

    def _remember(self, user_id: int, when: float, digest: str | None) -> None:
        if self.max_age_s <= 0 or self.size <= 0:
            return
        self._checked[user_id] = (when, digest)
        self._checked.move_to_end(user_id)
        while len(self._checked) > self.size:
            self._checked.popitem(last=False)

    async def _call(self, op: str, fn, *args):
        try:
            return await self.redis.call(op, fn, *args)
        except RedisUnavailable as e:
            raise StoreUnavailable(f"the {e}") from None
        except RedisDataError as e:  # the user's key holds another type: that user's problem
            self.on_event(op, "bad_record")
            raise users.UserRecordError(f"its key holds another Redis type ({e})") from None

    async def close(self) -> None:
        await self.redis.close()


class EmbeddedUserStore:
    """The user store as a file loaded in the process: no network, nothing to fail once
    loaded; a record is decoded and checked as Redis's are (features/users.py)."""

    def __init__(self, path: str | Path, on_event: Callable[[str, str], None] = lambda o, r: None):
        self.path = Path(path)
        self.url = f"file {self.path}"
        self.table = UserTable.load(self.path)  # UserTableError: refused at start
        self.on_event = on_event

    async def digest(self, user_id: int) -> str | None:
        found = self.table.get(user_id)
        self.on_event("check", "ok")
        return None if found is None else found[0]

    async def features(self, user_id: int, digest: str) -> dict:
        found = self.table.get(user_id)
        self.on_event("fetch", "ok")
        if found is None or found[0] != digest:
            raise Changed
        return users.decode(found[1], expected=digest)

    async def close(self) -> None:
        return None


def is_redis_url(store: str) -> bool:
    return store.split("://", 1)[0] in ("redis", "rediss", "redis+cluster", "rediss+cluster")
