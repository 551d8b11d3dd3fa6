"""Progress of long passes as log lines, for logs and pipes as much as for terminals.

A bar (tqdm) only helps a person at a terminal; a job's log, a CI console or `ranker train ... |
tee` gets nothing from it for minutes. `Progress` writes a line through `logging` every
`every_s` seconds of a pass: what is done of the total, the rate, the running figures the caller
gives (an epoch's loss), and the time left at that rate. A pass that ends within `every_s` writes
nothing at INFO, so small runs (tests) stay quiet. The readers (training/aliccp.py,
training/columnar.py) and the epochs (training/train.py) use it.
"""

from __future__ import annotations

import logging
import time

EVERY_S = 10.0


class Progress:
    def __init__(
        self,
        log: logging.Logger,
        label: str,
        total: int,
        unit: str = "rows",
        every_s: float = EVERY_S,
    ):
        self.log, self.label, self.total, self.unit = log, label, total, unit
        self.every_s = every_s
        self.start = self.last = time.monotonic()
        self.logged = False

    def update(self, done: int, **figures: float) -> None:
        """`done` of `total` so far; `figures` (e.g. loss=0.21) are written as `name value`."""
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last, self.logged = now, True
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        extra = "".join(f", {k} {v:.4f}" for k, v in figures.items())
        self.log.info(
            "%s: %s / %s %s (%.0f%%), %s %s/s%s, ETA %s",
            self.label,
            f"{done:,}",
            f"{self.total:,}",
            self.unit,
            100 * done / max(self.total, 1),
            f"{rate:,.0f}",
            self.unit,
            extra,
            duration(eta),
        )

    def finish(self) -> float:
        """Seconds the pass took, also logged: at INFO after progress lines, at DEBUG after none
        (a measurement can read it: training/read_bench.py times each file so)."""
        took = time.monotonic() - self.start
        level = logging.INFO if self.logged else logging.DEBUG
        self.log.log(level, "%s: %s %s in %.2f s", self.label, f"{self.total:,}", self.unit, took)
        return took


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`."""
    if seconds != seconds or seconds == float("inf"):
        return "unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
