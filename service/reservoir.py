"""Warm-up from real requests: a small reservoir of recent `/rank` bodies, and of the slowest
ones with where their time went, replayed through a version before it serves.

`Reservoir.offer` is called once per answered request: a uniform sample of `size` bodies over
all requests seen (reservoir sampling: each request seen so far is in it with the same chance),
and the `slow` slowest of the last two generations of `generation` requests, each with its
per-stage timings (decode, encode, user, score, fusion; ms). It costs a random draw per request
and, now and then, a copy of a body.

`replay` runs the bodies through one version as the service would, without its I/O: decoded
and checked by the service's rules, encoded through the version's contract and item table, a
user from the request's features (a user the request names only by id is encoded as one the
store lacks: the shapes and the code are the same, the store is not read), the user tower and
the item scorer at the bodies' own candidate counts, in jobs of `max_batch_rows`. A body the
version refuses (another model's features) is counted and skipped. The service replays the
reservoir into a new version before it swaps it in (service/reload.py), and into the first one
at start, before /readyz turns ready, from the file the last process saved (RANKER_WARM_FILE).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("service.reservoir")
STAGES = ("decode", "encode", "user", "score", "fusion")


@dataclass(frozen=True)
class Slow:
    ms: float
    body: bytes
    stages: dict  # stage -> ms


class Reservoir:
    def __init__(
        self,
        size: int = 64,
        slow: int = 16,
        generation: int = 10_000,
        rng: random.Random | None = None,
    ):
        self.size, self.slow_size, self.generation = size, slow, generation
        self.rng = rng or random.Random()
        self.recent: list[bytes] = []
        self.seen = 0
        self._slow: list[tuple[float, int, Slow]] = []  # a min-heap: the fastest on top
        self._older: list[Slow] = []  # the slowest of the generation before

    def offer(self, body: bytes, seconds: float, stages: tuple[float, ...] = ()) -> None:
        """One answered request: its body, its time and its stages' times (seconds, STAGES'
        order)."""
        self.seen += 1
        if len(self.recent) < self.size:
            self.recent.append(bytes(body))
        else:
            k = self.rng.randrange(self.seen)
            if k < self.size:
                self.recent[k] = bytes(body)
        if self.seen % self.generation == 0:
            self._older, self._slow = [s for *_, s in self._slow], []
        ms = seconds * 1e3
        if len(self._slow) < self.slow_size or ms > self._slow[0][0]:
            entry = (ms, self.seen, Slow(ms, bytes(body), _stages(stages)))
            if len(self._slow) < self.slow_size:
                heapq.heappush(self._slow, entry)
            else:
                heapq.heapreplace(self._slow, entry)

    def slowest(self) -> list[Slow]:
        """The slow requests kept, slowest first."""
        return sorted([*self._older, *(s for *_, s in self._slow)], key=lambda s: -s.ms)

    def bodies(self) -> list[bytes]:
        """What a warm-up replays: the recent sample and the slow ones, each body once."""
        return list(dict.fromkeys([*self.recent, *(s.body for s in self.slowest())]))

    # ---- across restarts --------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Written beside and renamed into place: a reader never sees half a file."""
        doc = {
            "recent": [b.decode("utf-8", "replace") for b in self.recent],
            "slow": [
                {
                    "ms": round(s.ms, 3),
                    "stages": s.stages,
                    "body": s.body.decode("utf-8", "replace"),
                }
                for s in self.slowest()
            ],
        }
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, **kwargs) -> Reservoir:
        """A reservoir holding what `save` wrote (empty when the file is missing or unreadable:
        a warm-up is never a reason not to start)."""
        res = cls(**kwargs)
        try:
            doc = json.loads(Path(path).read_text())
            res.recent = [b.encode() for b in doc.get("recent", [])][: res.size]
            res._older = [
                Slow(float(s["ms"]), s["body"].encode(), dict(s.get("stages", {})))
                for s in doc.get("slow", [])
            ][: res.slow_size]
            res.seen = len(res.recent)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("warm-up file %s not read (%s): starting without it", path, e)
        return res


def _stages(stages: tuple[float, ...]) -> dict:
    return {name: round(s * 1e3, 3) for name, s in zip(STAGES, stages, strict=False)}


def replay(model, bodies: list[bytes], rules) -> dict:
    """Each body through `model` (a ServedModel) as the service would score it, without its I/O
    and without its batcher (this runs before the version serves): what it replayed, skipped,
    the candidate counts and the time it took."""
    from service import request
    from service.errors import ClientError

    enc, engine = model.encoder, model.engine
    done, skipped, counts = 0, 0, []
    t0 = time.perf_counter()
    for body in bodies:
        try:
            r = request.decode_sized(body, rules)
            rows = enc.encode(r.req, r.price)
            if rows.user_ids is not None:
                uid, uw, lists = rows.user_ids, rows.user_weights, rows.user_lists
            else:
                uid, uw, lists = enc.encode_unknown_user(enc.store_key(r.req.user_id))
        except ClientError:
            skipped += 1
            continue
        rep = engine.user_repr(uid, uw)[0]
        part = np.concatenate([rep, lists]) if len(lists) else rep
        user_repr, packed = enc.split(part)
        enc.fill_crosses(rows, packed)
        step = model.max_batch_rows
        for a in range(0, len(rows.item_ids), step):
            ids, w = rows.item_ids[a : a + step], rows.item_weights[a : a + step]
            engine.score(user_repr[None], np.zeros(len(ids), np.int64), ids, w)
        done += 1
        counts.append(len(rows.item_ids))
    return {
        "replayed": done,
        "skipped": skipped,
        "candidates": (min(counts), max(counts)) if counts else None,
        "ms": round((time.perf_counter() - t0) * 1e3, 1),
    }
