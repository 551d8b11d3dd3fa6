"""Outcomes online: clicks and conversions reported against the answers that showed them
(`POST /feedback`), and the sums that let Prometheus watch calibration.

Every answer's returned items are remembered for RANKER_FEEDBACK_WINDOW_S, at most
RANKER_FEEDBACK_ROWS item rows in all (the oldest answers forgotten first): their model version,
arm and predictions. An event names `(request_id, item_id, kind)`; it counts once (a repeated
click is a duplicate), a conversion only after a click on the same impression (the funnel), and
an event for an answer no longer remembered is `late` (its label belongs to the offline join).
Each process remembers its own answers: an event that reaches another worker or replica than the
one that answered is `late` too, unless the answers are shared in Redis (RANKER_FEEDBACK_SHARED,
service/shared_answers.py: any process then counts an event against any answer, once).

What is counted, per head, model version and arm (docs/loop.md), so that Prometheus divides
predictions by outcomes over a window:

- ctr: every returned item's pCTR when answered (`ranker_prediction_sum`,
  `ranker_prediction_count`), against its click (`ranker_labels_total`);
- ctcvr: every returned item's pCTCVR when answered, against its conversion;
- cvr: a clicked item's pCVR when its click arrives, against its conversion;

and the same split into tenths of [0, 1] by the prediction (`ranker_calibration_bin_*`), for a
binned calibration error. Never labelled by user or item.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
import numpy as np

from service.errors import FeedbackUnavailable
from service.redis_guard import RedisUnavailable
from service.request import Key
from service.response import Served

MAX_EVENTS = 1000  # events per /feedback body


# what one event adds: (kind, head, the prediction it is of); the module's docstring's table
COUNTS = {
    "click": (("labels", "ctr", "pctr"), ("predictions", "cvr", "pcvr")),
    "conversion": (("labels", "cvr", "pcvr"), ("labels", "ctcvr", "pctcvr")),
}


class Event(msgspec.Struct, forbid_unknown_fields=True):
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    item_id: Key
    kind: Literal["click", "conversion"]


class FeedbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[Event], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]


class FeedbackResponse(msgspec.Struct, frozen=True):
    counted: int
    duplicate: Annotated[int, msgspec.Meta(description="a click or conversion already counted")]
    late: Annotated[
        int,
        msgspec.Meta(
            description="its answer is not remembered: older than RANKER_FEEDBACK_WINDOW_S, "
            "pushed out by RANKER_FEEDBACK_ROWS, or answered by another worker or replica "
            "(without RANKER_FEEDBACK_SHARED); the offline join's to count"
        ),
    ]
    unknown_item: Annotated[int, msgspec.Meta(description="the answer did not return that item")]
    without_click: Annotated[
        int, msgspec.Meta(description="a conversion on an impression never clicked: not counted")
    ]


@dataclass
class Shown:
    """One answer as remembered: its returned items' ids and predictions, what was reported."""

    version: str
    arm: str
    at: float
    ids: np.ndarray  # the returned items' ids, best first
    pctr: np.ndarray
    pcvr: np.ndarray
    pctcvr: np.ndarray
    index: dict | None = None  # id -> its first position, made at its first event
    clicked: set = field(default_factory=set)
    converted: set = field(default_factory=set)


class Outcomes:
    def __init__(
        self,
        count: Callable[..., None],
        window_s: float = 3600.0,
        max_rows: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        shared=None,  # SharedAnswers: the answers in Redis, for every process's events
    ):
        """`count(kind, head, version, arm, predictions)` adds to the metrics (Metrics.on_outcome):
        kind "predictions" counts the predictions; "labels" counts one label per prediction
        given, in the bin of that prediction (what the label is the outcome of)."""
        self.count, self.window_s, self.max_rows, self.clock = count, window_s, max_rows, clock
        self.shown: OrderedDict[str, Shown] = OrderedDict()
        self.rows = 0
        self.shared = shared

    def answered(self, s: Served) -> None:
        """An answer's returned items: their predictions counted, the answer remembered."""
        arm = s.arm or "none"
        o = s.order
        p_ctr, p_cvr, p_ctcvr = s.pctr[o], s.pcvr[o], s.pctcvr[o]
        self.count("predictions", "ctr", s.model_version, arm, p_ctr)
        self.count("predictions", "ctcvr", s.model_version, arm, p_ctcvr)
        # an array, not a list: thousands of remembered answers' lists would be there for the
        # garbage collector to walk on every full collection (measured: a 25 ms p999)
        ids = np.asarray(s.item_ids)[o]
        old = self.shown.pop(s.request_id, None)  # a caller's id sent twice: the later answer
        if old is not None:
            self.rows -= len(old.pctr)
        shown = Shown(s.model_version, arm, self.clock(), ids, p_ctr, p_cvr, p_ctcvr)
        self.shown[s.request_id] = shown
        self.rows += len(o)
        self._forget()
        if self.shared is not None:
            self.shared.remember(s.request_id, s.model_version, arm, ids, p_ctr, p_cvr, p_ctcvr)

    def _forget(self) -> None:
        limit = self.clock() - self.window_s
        while self.shown and (
            self.rows > self.max_rows or next(iter(self.shown.values())).at < limit
        ):
            _, s = self.shown.popitem(last=False)
            self.rows -= len(s.pctr)

    async def report(self, events: list[Event]) -> FeedbackResponse:
        """Each event against the answer that showed its item: this process's from memory,
        with shared answers the others' from Redis, where what was reported is kept too (each
        event then counts once across every process). FeedbackUnavailable when Redis cannot be
        asked: nothing of the body is counted."""
        try:
            return await self._report(events)
        except RedisUnavailable as e:
            raise FeedbackUnavailable(f"outcomes not counted: {e}") from None

    async def _report(self, events: list[Event]) -> FeedbackResponse:
        self._forget()
        out = dict.fromkeys(("counted", "duplicate", "late", "unknown_item", "without_click"), 0)
        known = {e.request_id: self.shown.get(e.request_id) for e in events}
        if self.shared is not None:
            missing = [rid for rid, s in known.items() if s is None]
            for rid, a in (await self.shared.answers(missing)).items():
                if a is not None:
                    known[rid] = Shown(a[0], a[1], self.clock(), *a[2:])
        found = []  # (event, its answer, the item's position)
        for e in events:
            s = known[e.request_id]
            pos = None if s is None else _position(s, e.item_id)
            if pos is None:
                out["late" if s is None else "unknown_item"] += 1
                continue
            found.append((e, s, pos))
        if self.shared is not None:
            results = await self.shared.mark([(e.request_id, e.kind, p) for e, _, p in found])
        else:  # in order: a click before its conversion in one body
            results = [_mark(s, e.kind, pos) for e, s, pos in found]
        for (e, s, pos), result in zip(found, results, strict=True):
            if result != "counted":
                out[result] += 1
                continue
            for kind, head, of in COUNTS[e.kind]:
                self.count(kind, head, s.version, s.arm, getattr(s, of)[pos : pos + 1])
            out["counted"] += 1
        return FeedbackResponse(**out)


def _mark(s: Shown, kind: str, pos: int) -> str:
    """One event on a remembered answer, as shared_answers.MARK does in Redis: a conversion only
    after its click, each once."""
    if kind == "conversion" and pos not in s.clicked:
        return "without_click"
    done = s.clicked if kind == "click" else s.converted
    if pos in done:
        return "duplicate"
    done.add(pos)
    return "counted"


def _position(s: Shown, item_id) -> int | None:
    """The item's first position in the answer (its index made at the answer's first event)."""
    if s.index is None:
        s.index = {}
        for pos, i in enumerate(s.ids.tolist()):
            s.index.setdefault(i, pos)
    return s.index.get(item_id)
