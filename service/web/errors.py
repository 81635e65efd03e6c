"""One error payload for every failure: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask, current_app, jsonify
from marshmallow import INCLUDE, Schema, fields
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorBodySchema(Schema):
    class Meta:
        # Some errors add context (the sanctions rules, a simulation report).
        unknown = INCLUDE

    code = fields.String(required=True, metadata={"example": "invalid_request"})
    message = fields.String(required=True)
    fields_ = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "bad fields by path (sim.imsi) and what is wrong with each"},
    )


class ErrorSchema(Schema):
    """The one error payload (documented for every error status in the OpenAPI document)."""

    error = fields.Nested(ErrorBodySchema, required=True)


class ApiError(Exception):
    """An error the API answers with on purpose."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        fields: dict | None = None,
        extra: dict | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.fields = fields
        self.extra = extra or {}
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    fields: dict | None = None,
    extra: dict | None = None,
    headers: dict | None = None,
):
    """A Flask response in the one error format."""
    body: dict = {"code": code or _CODES.get(status, "error"), "message": message}
    if fields is not None:
        body["fields"] = fields
    body.update(extra or {})
    response = jsonify({"error": body})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def flatten_fields(messages, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages as {"sim.imsi": ["..."]}: every bad field named by path."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                path = prefix or "_schema"
            for sub_path, sub_messages in flatten_fields(value, path).items():
                out.setdefault(sub_path, []).extend(sub_messages)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "_schema"] = list(messages)
    elif isinstance(messages, list):
        for item in messages:
            for sub_path, sub_messages in flatten_fields(item, prefix).items():
                out.setdefault(sub_path, []).extend(sub_messages)
    else:
        out[prefix or "_schema"] = [str(messages)]
    return out


# Errors that mean "Redis cannot serve right now" (down, unreachable, loading, failing over,
# out of memory, cluster reconfiguring), as opposed to a command Redis refused.
_OUTAGES: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,
)


def is_outage(exc: BaseException) -> bool:
    """True when EXC means Redis is (for now) unable to serve: answered with 503."""
    return isinstance(exc, _OUTAGES)


class OutageBreaker:
    """After Redis was found unreachable, /v1 calls answer 503 at once for a short while
    instead of each waiting out the socket timeouts; the first call after the pause tries
    Redis again (and trips the breaker anew if it is still away)."""

    def __init__(self, pause_s: float = 1.0):
        self.pause_s = pause_s
        self._until = 0.0

    def trip(self) -> None:
        """Redis was just found unreachable."""
        self._until = time.monotonic() + self.pause_s

    def is_open(self) -> bool:
        """True while calls should not even try Redis."""
        return time.monotonic() < self._until


def unavailable_response():
    """The one answer to any call while Redis is unreachable: 503 with Retry-After."""
    retry = str(current_app.config["SETTINGS"].retry_after_s)
    return error_response(
        503,
        "the decision store is unreachable; try again later",
        headers={"Retry-After": retry},
    )


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that give every error the one payload."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.fields, exc.extra, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages")
        if status == 422 and messages is not None:
            # flask-smorest/webargs: messages keyed by location ("json", "query").
            fields: dict[str, list[str]] = {}
            for location_messages in messages.values():
                fields.update(flatten_fields(location_messages))
            return error_response(422, "the request has invalid fields", fields=fields)
        if status == 400 and messages is not None:
            return error_response(400, "the body is not valid JSON")
        message = exc.description if status < 500 else "internal error"
        return error_response(status, message)

    @app.errorhandler(redis.exceptions.RedisError)
    @app.errorhandler(redis.exceptions.RedisClusterException)
    def _redis_down(exc: Exception):
        current_app.extensions["regionlock"].metrics.redis_error(exc)
        if not is_outage(exc):
            # Redis refused a command (WRONGTYPE, a bad argument…): a bug of ours, not an
            # outage, so no "try again later".
            log.error("redis refused a command", exc_info=exc)
            return error_response(500, "internal error")
        log.warning("redis unavailable: %s", type(exc).__name__)
        current_app.extensions["regionlock"].breaker.trip()
        return unavailable_response()

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error")
