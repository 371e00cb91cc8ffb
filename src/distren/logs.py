"""The server's log: text lines, or JSON lines (`distren serve --log-format json`), and the
optional access log (`--access-log`: uvicorn's line for each HTTP request answered, httpx's
for each request sent to a peer).

A JSON line is one object: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and, when the
record is about one job or frame, `job` and `frame` as distren:// URLs (given by the code that
logs through `about()`); an access line adds `client`, `method`, `path`, `http_version` and
`status`; an exception adds `exception` (its traceback as text).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from .url import format_url

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
ACCESS_LOGGER = "uvicorn.access"
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def about(server: str, job: int, frame: int | None = None) -> dict:
    """`extra=` for a log record about a job (and one of its frames): their distren:// URLs."""
    fields = {"job": format_url(server, job)}
    if frame is not None:
        fields["frame"] = format_url(server, job, frame)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job", "frame"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        # uvicorn's access records: '%s - "%s %s HTTP/%s" %d' over these five
        if record.name == ACCESS_LOGGER and isinstance(record.args, tuple) and len(record.args) == 5:
            out.update(zip(_ACCESS_FIELDS, record.args))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


def configure(log_format: str = "text", access_log: bool = False) -> None:
    """The root logger's one handler (stderr) in `log_format`; uvicorn's loggers go through it
    (its own handlers are not installed: `uvicorn_config(log_config=None)`). The access log is
    uvicorn's, at INFO, when asked for; silent otherwise."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # uvicorn's own start-up chatter at INFO adds nothing to distren's line; its warnings stay
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    # httpx logs each request this server sends (to peers) at INFO: the other half of the
    # access log, with it only (an idle farm asks its peers for work several times a second)
    logging.getLogger("httpx").setLevel(logging.INFO if access_log else logging.WARNING)
