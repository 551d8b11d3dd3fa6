"""Admission control: shed load at the door instead of melting (standard library only).

The bound is candidate rows admitted and not yet scored, not requests: one 2,000-candidate
request costs what forty 50-candidate ones do. A request is refused at once when

- its rows would take the admitted rows over `max_rows` (the queue is full), or
- the rows already admitted, at the measured scoring rate, would not be done before its
  deadline (it would only be run to be thrown away), or
- the service is draining for shutdown.

The rate is measured end to end: candidate rows released per second of busy time (time with
rows admitted), so it counts everything a request costs (decoding, encoding, the user tower,
scoring, the response), not the model alone; on two cores the event loop's share is most of it.
Until a second of busy time has been seen, `seed_rows_per_s` (the model's own rate) stands in.

A refusal carries `retry_after_s`: the time the admitted rows take to drain at the measured rate,
rounded up to whole seconds, at least 1. Admission itself costs a few attribute reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


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
        self.bytes_per_row: float | None = None  # of request bodies, for refusals before decoding
        self._busy_since = 0.0
        self._busy_s = 0.0  # busy time and rows released in the current measuring window
        self._done_rows = 0

    @property
    def rows_per_s(self) -> float | None:
        return self.measured_rows_per_s or self._seed()

    def expected_wait_s(self, extra_rows: int = 0) -> float | None:
        rate = self.rows_per_s
        return None if not rate else (self.rows + extra_rows) / rate

    def learn_size(self, body_bytes: int, rows: int) -> None:
        """Fold one decoded request into the bytes-per-row estimate that `full` uses."""
        if rows > 0 and body_bytes > 0:
            b = body_bytes / rows
            self.bytes_per_row = (
                b if self.bytes_per_row is None else 0.9 * self.bytes_per_row + 0.1 * b
            )

    def full(self, body_bytes: int = 0) -> bool:
        """True when a request of `body_bytes` (its Content-Length) would not fit: refuse it
        before its body is read and decoded, which under overload is most of a refusal's cost.
        Its rows are estimated from the bytes per row of recent requests, with a 20% margin
        so that an estimate refuses only what clearly would not fit."""
        est = 0.8 * body_bytes / self.bytes_per_row if self.bytes_per_row else 0.0
        return self.draining or self.rows + max(est, 1.0) > self.max_rows

    def refuse_now(self) -> None:
        if self.draining:
            self._refuse("draining", "the service is shutting down")
        self._refuse(
            "queue_full",
            f"overloaded: {self.rows} candidate rows queued; this request's would pass the "
            f"bound of {self.max_rows}",
        )

    def retry_after_s(self) -> int:
        wait = self.expected_wait_s()
        return max(1, math.ceil(wait)) if wait is not None else 1

    def admit(self, rows: int, timeout_s: float) -> None:
        """Take `rows` in, or raise Refused. The caller must `release(rows)` once scored."""
        if self.draining:
            self._refuse("draining", "the service is shutting down")
        if self.rows + rows > self.max_rows:
            self._refuse(
                "queue_full",
                f"overloaded: {self.rows} candidate rows queued, {rows} more would pass the "
                f"bound of {self.max_rows}",
            )
        wait = self.expected_wait_s(rows)
        if wait is not None and wait > timeout_s:
            self._refuse(
                "deadline",
                f"overloaded: the rows queued take about {wait * 1000:.0f} ms, over this "
                f"request's timeout of {timeout_s * 1000:.0f} ms",
            )
        if self.rows == 0:
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
