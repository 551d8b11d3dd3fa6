"""Progress lines: written through logging on a schedule, quiet for short passes."""

from __future__ import annotations

import logging

import pytest

from training import progress
from training.progress import Progress, duration


def test_lines_come_on_the_schedule_with_rate_figures_and_eta(monkeypatch, caplog):
    clock = iter([0.0, 5.0, 12.0, 13.0, 30.0, 40.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        p = Progress(log, "epoch 1/3", 1000, every_s=10)  # starts at 0
        p.update(100, loss=0.5)  # t=5: too soon
        p.update(300, loss=0.25)  # t=12: a line
        p.update(310)  # t=13: too soon after the last
        p.update(750)  # t=30: a line
        assert p.finish() == 40.0
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "epoch 1/3: 300 / 1,000 rows (30%), 25 rows/s, loss 0.2500, ETA 28 s"
    assert lines[1] == "epoch 1/3: 750 / 1,000 rows (75%), 25 rows/s, ETA 10 s"
    assert lines[2] == "epoch 1/3: 1,000 rows in 40.00 s"
    assert len(lines) == 3


def test_a_short_pass_writes_its_total_at_debug_only(caplog):
    with caplog.at_level(logging.DEBUG):
        p = Progress(logging.getLogger("test.quiet"), "read x", 10, unit="lines")
        p.update(10)
        p.finish()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert caplog.records[0].getMessage().startswith("read x: 10 lines in ")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")],
)
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert duration(seconds) == text
    assert duration(float("inf")) == "unknown"
