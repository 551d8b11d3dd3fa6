"""service/logs.py: JSON log lines carry the request id of the request they were logged in, and
RANKER_LOG_FORMAT, read from the environment, turns them on for uvicorn's lines too."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from service.config import Settings
from service.logs import JsonFormatter
from service.requestid import REQUEST_ID, install_log_field


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    install_log_field()  # as the service does: the id is taken when the record is made
    return logging.getLogger("service.test").makeRecord(
        "service.test", logging.WARNING, __file__, 1, message, args, exc_info
    )


def test_a_line_outside_a_request_has_no_request_id():
    line = JsonFormatter().format(record("scored %d rows\nin one run", 3))
    assert "\n" not in line
    out = json.loads(line)
    assert out.keys() == {"time", "level", "logger", "message"}
    assert (out["level"], out["logger"]) == ("WARNING", "service.test")
    assert out["message"] == "scored 3 rows\nin one run"
    assert out["time"].endswith("+00:00") and len(out["time"]) == len(
        "2026-01-01T00:00:00.000+00:00"
    )


def test_a_line_logged_within_a_request_carries_its_id():
    token = REQUEST_ID.set("trace-42.a")
    try:
        made = record("inside")
    finally:
        REQUEST_ID.reset(token)
    assert json.loads(JsonFormatter().format(made))["request_id"] == "trace-42.a"


def test_an_exception_is_in_the_same_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record("failed", exc_info=sys.exc_info())
    line = JsonFormatter().format(made)
    assert "\n" not in line
    assert json.loads(line)["exception"].endswith("RuntimeError: boom")


def test_the_format_is_read_from_the_environment(monkeypatch):
    assert Settings().log_format == "text"
    monkeypatch.setenv("RANKER_LOG_FORMAT", "json")
    assert Settings().log_format == "json"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_service_logs_as_its_setting_says(log_format, tmp_path):
    """A start that fails (no model): every line uvicorn and the service write is JSON with
    RANKER_LOG_FORMAT=json, and text (uvicorn's own format) by default."""
    env = {**os.environ, "RANKER_MODEL_DIR": str(tmp_path / "none"), "RANKER_PORT": "1"}
    if log_format == "json":
        env["RANKER_LOG_FORMAT"] = "json"
    r = subprocess.run(
        [sys.executable, "-m", "service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "no exported model under" in r.stderr
    lines = r.stderr.splitlines()
    if log_format == "text":
        assert lines[0].startswith("INFO:") and not any(x.startswith("{") for x in lines)
        return
    logged = [json.loads(x) for x in lines]
    assert logged[0]["logger"] == "uvicorn.error" and logged[-1]["level"] == "ERROR"
