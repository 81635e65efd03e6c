"""Structured logs: one JSON object per line, and one line per request.

Every line has ``ts``, ``level``, ``logger``, ``msg``; lines written while a request is handled
also carry its ``request_id``. The request line adds ``method``, ``path`` (no query string),
``status`` and ``duration_ms``. Headers are never logged, so neither is a token.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Flask, g, has_request_context, request

log = logging.getLogger("regionlock.request")

# A caller's X-Request-Id is kept when it looks like an id; anything else could forge log
# lines or smuggle data, so a fresh one replaces it.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# LogRecord attributes that are not extra fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def lean_log_records() -> None:
    """Make every log record cheaper to build (issue 17.2: a request's line is on its path):
    no caller lookup (a stack walk per line), no thread or process names. None of these is in
    the JSON lines (the Python logging HOWTO, "Optimization"). Process-wide; called by the app
    factory, so the server's workers inherit it."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (extras included) on one line."""

    # The "ts" text of the second last formatted (a request line each time: one strftime a
    # second instead of a datetime per line). A tuple, swapped whole: safe between threads.
    _second: tuple[int, str] = (-1, "")

    def _ts(self, created: float) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            cached = self._second = (second, text)
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for RECORD."""
        entry: dict[str, Any] = {
            "ts": self._ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if "request_id" not in record.__dict__ and has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: int | str = logging.INFO) -> None:
    """JSON lines on stderr for the root logger (the server; tests keep pytest's handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def json_log_config(level: str = "INFO") -> dict[str, Any]:
    """A logging.dictConfig for the HTTP server (granian applies it in its master and in every
    worker): its own lines (start, workers, errors) and the app's, as JSON on stderr. Its access
    log stays off (the app writes one line per request itself)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "_granian": {"handlers": [], "propagate": True},
            "granian.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
        },
    }


def request_id_for(header: str | None) -> str:
    """The caller's request id when sane, else a new one."""
    if header and _SANE_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


def init_request_logging(app: Flask, observe=None) -> None:
    """Give every request an id (echoed as X-Request-Id) and log one line when it is answered.

    OBSERVE(endpoint, method, status) is called for each answered request (metrics).
    """
    lean_log_records()

    @app.before_request
    def _start() -> None:
        g.request_id = request_id_for(request.headers.get("X-Request-Id"))
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(response):
        started = g.get("request_started")
        request_id = g.get("request_id") or request_id_for(None)
        response.headers["X-Request-Id"] = request_id
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if observe is not None:
            observe(endpoint, request.method, response.status_code)
        log_request(request_id, request.method, request.path, response.status_code, duration_ms)
        return response


def log_request(
    request_id: str, method: str, path: str, status: int, duration_ms: float | None
) -> None:
    """The one line of an answered request."""
    # An outage (503) is expected and already reported by the Redis error handler.
    level = logging.ERROR if status >= 500 and status != 503 else logging.INFO
    log.log(
        level,
        "request",
        extra={
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
        },
    )
