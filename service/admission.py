"""Admission control: shed load at the door instead of melting (standard library only).

The bound is candidate rows admitted and not yet scored, not requests: one 2,000-candidate
request costs what forty 50-candidate ones do. A request is refused at once when

- its rows would take the admitted rows over `max_rows` (the queue is full), or
- the rows already admitted, at the measured scoring rate, would not be done before its
  deadline (it would only be run to be thrown away), or
- the service is draining for shutdown.

A refusal carries `retry_after_s`: the time the admitted rows take to drain at the measured rate,
rounded up to whole seconds, at least 1. Admission itself costs a few attribute reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class Refused(Exception):
    """Not admitted. `reason`: queue_full, deadline or draining."""

    def __init__(self, reason: str, message: str, retry_after_s: int):
        super().__init__(message)
        self.reason, self.message, self.retry_after_s = reason, message, retry_after_s


class Admission:
    def __init__(self, max_rows: int, rows_per_s: Callable[[], float | None]):
        self.max_rows, self._rows_per_s = max_rows, rows_per_s
        self.rows = 0  # admitted and not yet released
        self.draining = False
        self.refused: dict[str, int] = {"queue_full": 0, "deadline": 0, "draining": 0}

    def expected_wait_s(self, extra_rows: int = 0) -> float | None:
        rate = self._rows_per_s()
        return None if not rate else (self.rows + extra_rows) / rate

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
        self.rows += rows

    def release(self, rows: int) -> None:
        self.rows -= rows

    def _refuse(self, reason: str, message: str) -> None:
        self.refused[reason] += 1
        raise Refused(reason, message, self.retry_after_s())
