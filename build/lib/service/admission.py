"""Admission control: shed load at the door instead of melting (standard library only).

The unit is candidate rows admitted and not yet scored, not requests: one 2,000-candidate
request costs what forty 50-candidate ones do. A request is admitted when nothing is queued (an
idle server never refuses a valid request); otherwise it is refused at once when

- the rows queued ahead of it and its own, at the measured scoring rate, would take more than
  `DEADLINE_SHARE` (30%) of its timeout: it would likely miss its deadline (reason `deadline`); or
- its rows would take the admitted rows over `max_rows`, a bound on memory set well above what
  deadlines let in (reason `queue_full`); or
- the service is draining for shutdown (reason `draining`).

So a request that would meet its deadline is served, and under overload the queue holds about
one deadline's worth of work: goodput stays at the saturation rate while the excess is refused
cheaply, each refusal carrying `Retry-After`.

The rate is measured end to end: candidate rows released per second of busy time (time with
rows admitted), so it counts everything a request costs (decoding, encoding, the user tower,
scoring, the response), not the model alone; on two cores the event loop's share is most of it.
Until a second of busy time has been seen, `seed_rows_per_s` (the model's own rate) stands in.

Before a body is read only the memory bound can refuse (`full`): nothing else is known yet. A
body larger than allowed (413) or with too many candidates (422) is the client's error, told as
such, never as overload.

`retry_after_s`: the time the admitted rows take to drain at the measured rate, rounded up to
whole seconds, at least 1. Admission itself costs a few attribute reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# The share of a request's timeout the admitted rows may take: the rest is for what admission
# cannot see (the time the request waited to be read, its own decoding, the response) and for the
# rate's error, so an admitted request meets its deadline as its client measures it. Measured
# (make overload, 2x saturation open loop): 0.3 kept accepted p99 at half the deadline and
# refusals fast; 0.4 and 0.5 let accepted p99 pass the deadline. 32 closed-loop clients of 500
# candidates each (about 0.25 s of queued work) are all admitted.
DEADLINE_SHARE = 0.3


class Refused(Exception):
    """Not admitted. `reason`: queue_full, deadline or draining."""

    def __init__(self, reason: str, message: str, retry_after_s: int):
        super().__init__(message)
        self.reason, self.message, self.retry_after_s = reason, message, retry_after_s


class Admission:
    def __init__(
        self,
        max_rows: int,
        seed_rows_per_s: Callable[[], float | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        on_refuse: Callable[[str], None] = lambda reason: None,
    ):
        self.max_rows, self._seed, self.clock = max_rows, seed_rows_per_s, clock
        self.on_refuse = on_refuse
        self.rows = 0  # admitted and not yet released
        self.draining = False
        self.refused: dict[str, int] = {"queue_full": 0, "deadline": 0, "draining": 0}
        self.measured_rows_per_s: float | None = None
        self._busy_since = 0.0
        self._busy_s = 0.0  # busy time and rows released in the current measuring window
        self._done_rows = 0

    @property
    def rows_per_s(self) -> float | None:
        return self.measured_rows_per_s or self._seed()

    def expected_wait_s(self, extra_rows: int = 0) -> float | None:
        rate = self.rows_per_s
        return None if not rate else (self.rows + extra_rows) / rate

    def full(self) -> bool:
        """True when no request could be admitted now: refuse it before its body is read."""
        return self.draining or self.rows >= self.max_rows

    def refuse_now(self) -> None:
        if self.draining:
            self._refuse("draining", "the service is shutting down")
        self._refuse(
            "queue_full", f"overloaded: {self.rows} candidate rows queued, the bound is full"
        )

    def retry_after_s(self) -> int:
        wait = self.expected_wait_s()
        return max(1, math.ceil(wait)) if wait is not None else 1

    def admit(self, rows: int, timeout_s: float) -> None:
        """Take `rows` in, or raise Refused. The caller must `release(rows)` once scored."""
        if self.draining:
            self._refuse("draining", "the service is shutting down")
        if self.rows > 0:
            wait = self.expected_wait_s(rows)
            if wait is not None and wait > DEADLINE_SHARE * timeout_s:
                self._refuse(
                    "deadline",
                    f"overloaded: the rows queued and this request's take about "
                    f"{wait * 1000:.0f} ms, over {DEADLINE_SHARE:.0%} of this request's timeout of "
                    f"{timeout_s * 1000:.0f} ms",
                )
            if self.rows + rows > self.max_rows:
                self._refuse(
                    "queue_full",
                    f"overloaded: {self.rows} candidate rows queued, {rows} more would pass the "
                    f"bound of {self.max_rows}",
                )
        else:
            self._busy_since = self.clock()
        self.rows += rows

    def release(self, rows: int) -> None:
        now = self.clock()
        self._busy_s += now - self._busy_since  # rows were in flight since the last event
        self._busy_since = now
        self.rows -= rows
        self._done_rows += rows
        if self._busy_s >= 1.0:  # a second of busy time: fold it into the rate
            rate = self._done_rows / self._busy_s
            old = self.measured_rows_per_s
            self.measured_rows_per_s = rate if old is None else 0.7 * old + 0.3 * rate
            self._busy_s, self._done_rows = 0.0, 0

    def _refuse(self, reason: str, message: str) -> None:
        self.refused[reason] += 1
        self.on_refuse(reason)
        raise Refused(reason, message, self.retry_after_s())
