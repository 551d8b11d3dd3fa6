"""The one place that knows every part: body -> request -> admission -> model -> cache ->
batcher -> fusion -> response.

Flow of one request: a scan of its body gives its candidate count and timeout (request.py);
admission takes its rows in or refuses them at once (admission.py); its body is decoded and
checked (request.py); it leases the current model version (served.py)
and keeps that lease to the end, so a reload never changes the model under it. Both sides are
encoded through that version's feature contract (encoding.py); the user part is looked up in the
version's user cache, or the user tower runs once (off the event loop). Its candidates become
item rows in jobs of at most `max_batch_rows`, scored by the batcher together with other
requests' rows, before the request's deadline or not at all. Fusion turns pCTR/pCVR/price into
the score; items come back sorted, with the version that scored them. Duplicate item ids are
allowed: each candidate is its own row.

Large bodies are decoded and encoded in a worker thread, so one 4 MB request does not hold the
event loop (and every other request) for the tens of milliseconds its Python work takes; small
ones stay on the loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor

from features.contract import ALL_FIELDS, FeatureContract
from features.users import UserRecordError
from service import fusion, request, tracing
from service.admission import Admission, Refused
from service.arms import Arms
from service.encoding import Encoded
from service.errors import Overloaded, StoreUnavailable, Timeout
from service.feedback import Outcomes
from service.impressions import ImpressionLog
from service.requestid import REQUEST_ID
from service.response import RankResponse, Served, ShadowScores, order_of, ranked
from service.served import ModelSlot, ServedModel
from service.user_store import Changed, UserStore

log = logging.getLogger("service.ranking")
OFF_LOOP_BYTES = 64 << 10  # bodies this large are decoded and encoded off the event loop
RAW_USERS = 1024  # users' raw rows the log keeps at hand (about 12 kB each at 1,000 columns)
SHADOW_S = 1.0  # a shadow scoring not done within this is dropped (its batcher is behind)


class Ranker:
    def __init__(
        self,
        slot: ModelSlot,
        admission: Admission,
        rules: request.Rules,
        workers: Executor,
        on_request: Callable[[int], None] = lambda candidates: None,
        on_unknown: Callable[[int], None] = lambda candidates: None,
        users: UserStore | None = None,
        on_unknown_user: Callable[[], None] = lambda: None,
        impressions: ImpressionLog | None = None,
        arms: Arms | None = None,
        on_arm: Callable[[str, Arms], None] = lambda name, arms: None,
        outcomes: Outcomes | None = None,
        shadows=None,  # a Counter by outcome (metrics.shadow)
        reservoir=None,  # recent bodies for warm-ups (service/reservoir.py)
    ):
        self.slot, self.admission, self.rules, self.workers = slot, admission, rules, workers
        self.on_request, self.on_unknown = on_request, on_unknown
        self.users, self.on_unknown_user = users, on_unknown_user
        self.impressions = impressions  # each answer offered to the log (off: None)
        self.arms, self.on_arm = arms, on_arm  # arms: swapped whole when its file changes
        self.outcomes = outcomes
        self._tasks: set[asyncio.Task] = set()  # log records waiting for a store read
        # (model digest, user key, record digest) -> the user's raw row, for the log: a cache
        # hit's user is read again from the store once, not once an answer
        self._raw_users: collections.OrderedDict = collections.OrderedDict()
        self.shadows, self.reservoir = shadows, reservoir

    def refuse_early(self) -> None:
        """Before a body is read: refuse at once when no request could be admitted now."""
        if self.admission.full():
            try:
                self.admission.refuse_now()
            except Refused as e:
                raise Overloaded(e.message, e.retry_after_s) from None

    async def rank(self, body: bytes) -> RankResponse:
        # Admission first, on what a scan of the body says (rows, timeout): a refused request
        # costs the scan, never its decoding, and nothing waits unadmitted in a decode queue.
        size = request.size(body, self.rules)
        deadline = asyncio.get_running_loop().time() + size.timeout_s
        try:
            self.admission.admit(size.rows, size.timeout_s)
        except Refused as e:
            raise Overloaded(e.message, e.retry_after_s) from None
        try:
            return await self._rank(body, deadline)
        finally:
            self.admission.release(size.rows)

    async def _rank(self, body: bytes, deadline: float) -> RankResponse:
        t0 = time.perf_counter()
        large = len(body) >= OFF_LOOP_BYTES
        with tracing.span("decode"):
            if large:
                r = await self._off_loop(request.decode_sized, body, self.rules)
            else:
                r = request.decode_sized(body, self.rules)
        t1 = time.perf_counter()
        self.on_request(r.rows)
        arm, arms, slot = None, self.arms, self.slot
        if arms is not None:  # the user's arm: its fusion where the request sets none, its model
            arm = arms.assign(r.req.user_id)
            r = self.rules.with_default(r, arm.fusion)
            if arm.model is not None:
                slot = arms.slots[arm.model]
        async with slot.lease() as model:
            user_key = None
            if r.req.user_features is None:
                user_key = model.encoder.store_key(r.req.user_id)
            with tracing.span("encode"):
                if large:
                    rows = await self._off_loop(model.encoder.encode, r.req, r.price)
                else:
                    rows = model.encoder.encode(r.req, r.price)
            t2 = time.perf_counter()
            price = r.prices(rows.price)  # the request's, else the table's; refused if none
            try:
                async with asyncio.timeout_at(deadline):
                    with tracing.span("user_repr"):
                        part, hit, source, seen = await self._user(
                            model, r.req.user_id, user_key, rows
                        )
                    user_repr, lists = model.encoder.split(part)
                    model.encoder.fill_crosses(rows, lists)
                    t3 = time.perf_counter()
                    scores = await model.score(
                        user_repr, rows.item_ids, rows.item_weights, deadline
                    )
                    t4 = time.perf_counter()
            except TimeoutError:  # also the batcher's DeadlineExceeded: never run
                raise Timeout(f"not scored within {r.timeout_s * 1000:.0f} ms") from None
        keys = r.req.item_keys()
        unknown = [keys[i] for i in rows.unknown.tolist()]
        if unknown:
            self.on_unknown(len(unknown))
        with tracing.span("fusion"):
            fused = fusion.score(r.fusion, scores.pctr, scores.pcvr, price)
        order = order_of(fused, r.req.top_k)
        if self.reservoir is not None:  # a sample of what is asked, and the slowest, for warm-ups
            t5 = time.perf_counter()
            self.reservoir.offer(body, t5 - t0, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4))
        rid = REQUEST_ID.get()
        name = None if arm is None else arm.name
        answer = ranked(
            model.version, hit, r.fusion, keys, scores, fused, order, unknown, source, rid, name
        )
        if arm is not None:
            self.on_arm(arm.name, arms)  # an answer of this arm
        logged = self.impressions is not None and self.impressions.sampled()
        if logged and seen.raw is None and seen.record is None and seen.digest:
            seen.raw = self._raw_users.get((model.digest, seen.key, seen.digest))  # LRU
            if seen.raw is not None:
                self._raw_users.move_to_end((model.digest, seen.key, seen.digest))
        if self.outcomes is not None or logged:
            served = Served(
                request_id=rid,
                time_s=time.time(),
                model_version=model.version,
                model_digest=model.digest,
                arm=name,
                fusion=r.fusion,
                user_id=r.req.user_id,
                user=source,
                user_cache=answer.user_cache,
                item_ids=keys,
                order=order,
                pctr=scores.pctr,
                pcvr=scores.pcvr,
                pctcvr=scores.pctcvr,
                score=fused,
                price=price,
                context=r.req.context_features,
                **(seen.served(model.encoder, rows) if logged else {}),
            )
            if self.outcomes is not None:  # what /feedback joins to, and the prediction sums
                self.outcomes.answered(served)
            if logged:  # after the answer is built: answers only
                self._log(served, seen, arms, r)
        return answer

    def _log(self, served: Served, seen: UserSeen, arms: Arms | None, r) -> None:
        """Put an answer on the log now, or once what it lacks is there (_log_later)."""
        shadow = None
        if arms is not None and arms.shadow and random.random() < arms.shadow.sample:
            shadow = arms.slots[arms.shadow.model]
        if shadow is not None or _needs_record(served, seen):
            self._later(self._log_later(served, seen, shadow, r))
        else:
            self.impressions.put(served)

    def _later(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # (held until done: the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the answers still being completed for the log (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _log_later(self, served: Served, seen: UserSeen, shadow, r) -> None:
        """Log an answer once what it lacks is there, after it was sent: the shadow model's
        scores of it (`shadow`: that version's slot), and the stored record of a user that
        came from a cache tier, read again, which must still be the one of the digest it was
        served by (a record changed, or a store failing, since leaves the user's features out
        of the log, `user_logged` false: never a wrong record in)."""
        if shadow is not None:
            try:
                served = dataclasses.replace(served, shadow=await self._shadow(shadow, r))
                self.shadows.labels("ok").inc()
            except TimeoutError:  # (the batcher's DeadlineExceeded too)
                self.shadows.labels("timeout").inc()
            except Exception:  # the shadow's failure is never the answer's
                log.warning("shadow scoring failed", exc_info=True)
                self.shadows.labels("failed").inc()
        if _needs_record(served, seen):
            raw = None
            try:
                record = await self.users.features(seen.key, seen.digest)
                raw = served.encoder.stored_user_raw(record, seen.key)
            except Exception as e:  # Changed, StoreUnavailable, an unusable record
                log.debug("log: user %r's record not read again (%s)", served.user_id, e)
            if raw is not None:
                self._raw_users[(served.model_digest, seen.key, seen.digest)] = raw
                while len(self._raw_users) > RAW_USERS:
                    self._raw_users.popitem(last=False)
            served = dataclasses.replace(served, user_raw=raw)
        self.impressions.put(served)

    async def _shadow(self, slot: ModelSlot, r) -> ShadowScores:
        """The request scored again by another version, as it would have served it (its own
        contract, user cache and batcher), within SHADOW_S: never waited for by the answer."""
        deadline = asyncio.get_running_loop().time() + SHADOW_S
        async with slot.lease() as model:
            key = (
                None if r.req.user_features is not None else model.encoder.store_key(r.req.user_id)
            )
            rows = await self._off_loop(model.encoder.encode, r.req, r.price)
            price = r.prices(rows.price)
            async with asyncio.timeout_at(deadline):
                part, *_ = await self._user(model, r.req.user_id, key, rows, count=False)
                user_repr, lists = model.encoder.split(part)
                model.encoder.fill_crosses(rows, lists)
                scores = await model.score(user_repr, rows.item_ids, rows.item_weights, deadline)
        fused = fusion.score(r.fusion, scores.pctr, scores.pcvr, price)
        return ShadowScores(model.version, scores.pctr, scores.pcvr, scores.pctcvr, fused)

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)

    async def _user(
        self, model: ServedModel, user_id, key: int | None, rows: Encoded, count: bool = True
    ):
        """(user part, cache hit, where the features came from, what the log needs of them):
        the request's; else the store's current ones (the user found by `key`), proven current
        by their digest; else, for a user the store lacks, the user id alone (its key
        feature), counted."""
        if rows.user_ids is not None:
            part = await model.user_repr(user_id, rows.user_ids, rows.user_weights, rows.user_lists)
            return *part, "request", UserSeen(raw=rows.user_raw)
        for _ in range(3):  # a record rewritten between the digest read and the fetch: again
            try:
                digest = await self.users.digest(key)
                if digest is None:
                    break
                seen = UserSeen(key=key, digest=digest)

                async def fetch(seen=seen, digest=digest) -> dict:
                    seen.record = await self.users.features(key, digest)
                    return seen.record

                return *await model.stored_user_repr(key, digest, fetch), "store", seen
            except Changed:
                continue
            except UserRecordError as e:  # that user's record, never the store's failure
                log.warning("user %r: stored record unusable (%s): scored by its id", user_id, e)
                break
        else:
            raise StoreUnavailable("the user's stored features kept changing while being read")
        if count:
            self.on_unknown_user()
        part = await model.user_repr(key, *model.encoder.encode_unknown_user(key))
        return *part, "unknown", UserSeen(key=key, unknown=True)


def _needs_record(served: Served, seen: UserSeen) -> bool:
    """A user from a cache tier whose raw row is not at hand: its record is read again."""
    return served.user_raw is None and served.user_record is None and bool(seen.digest)


@dataclasses.dataclass
class UserSeen:
    """What the impression log needs of the user an answer served: the raw row (the request's
    features), the store's record read for this answer, or the key and digest of the record a
    cache tier's representation was made from."""

    raw: tuple | None = None
    key: int | None = None
    digest: str | None = None
    record: dict | None = None
    unknown: bool = False

    def served(self, encoder, rows: Encoded) -> dict:
        raw = self.raw
        if self.unknown:
            raw = encoder.unknown_user_raw(self.key)
        return {
            "encoder": encoder,
            "user_raw": raw,
            "user_record": self.record,
            "user_key": self.key,
            "items_raw": rows.items_raw,
        }


def contract_summary(contract: FeatureContract) -> dict:
    """The fields a model reads per side, the Ali-CCP fields it leaves out (skipped when a
    request gives them), and the numeric item attributes it reads (a candidate's `price` and
    `attributes`, else the item table's); a spec's model: its spec, and its features by name
    with their kinds."""
    used = {f.name for f in contract.fields}
    if contract.keys is not None:
        return {
            "spec": contract.spec,
            "keys": contract.keys,
            "features": [
                {
                    "name": f.name,
                    "source": f.source,
                    "kind": "numeric" if f.numeric else ("ids" if f.max_len > 1 else "id"),
                    "max_len": f.max_len,
                    **({"values": f.dtype} if f.dtype else {}),
                    **({"count_in": list(f.cross)} if f.cross else {}),
                }
                for f in contract.fields
            ],
        }
    return {
        **{
            side: [{"field": f.name, "max_len": f.max_len} for f in contract.side_fields(side)]
            for side in ("user", "item")
        },
        "left_out": [n for n in ALL_FIELDS if n not in used],
        "numeric": [f.name for f in contract.side_fields("item") if f.numeric],
    }
