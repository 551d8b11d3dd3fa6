"""The service's log lines: text (the default) or one JSON object a line (RANKER_LOG_FORMAT=json),
for a log pipeline that parses fields instead of patterns.

A JSON line holds `time` (UTC, ISO 8601, milliseconds), `level`, `logger`, `message`, and
`request_id` when the line was logged while a request ran (service/requestid.py's context
variable, taken when the record is made); a logged exception adds `exception` with its trace.
One record is one line whatever it holds: JSON escapes newlines, so neither a trace nor a
message can split a line or forge another. uvicorn's own lines ("Started server process", ...)
go through the same handler in JSON; in text they keep uvicorn's format, as before.
"""

from __future__ import annotations

import datetime
import logging

import orjson
from uvicorn.config import LOGGING_CONFIG

from service.requestid import install_log_field

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")  # install_log_field's factory sets it
        if rid != "-":
            line["request_id"] = rid
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line).decode()


def configure(log_format: str) -> dict | None:
    """Log INFO and above to stderr, as `text` or `json`; returns uvicorn's `log_config` to
    match (its own text config, or None so that its loggers reach this handler)."""
    install_log_field()
    handler = logging.StreamHandler()
    json = log_format == "json"
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return None if json else LOGGING_CONFIG
