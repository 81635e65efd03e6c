"""One error payload for every failure: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask, current_app, jsonify
from marshmallow import INCLUDE, Schema, fields
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from service.engine.validation import flatten_messages

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
    500: "internal_error",
    503: "unavailable",
}


def error_code(status: int) -> str:
    """The code of STATUS in the one error payload: ours above, else werkzeug's status name
    (431 -> request_header_fields_too_large)."""
    if status in _CODES:
        return _CODES[status]
    name = HTTP_STATUS_CODES.get(status)
    if name is None:
        return "internal_error" if status >= 500 else "bad_request"
    return "_".join(name.lower().replace("-", " ").replace("'", "").split())


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
        self.code = code or error_code(status)
        self.fields = fields
        self.extra = extra or {}
        self.headers = headers or {}


def error_document(
    status: int,
    message: str,
    code: str | None = None,
    fields: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """The one error payload, as a document (error_response sends it)."""
    body: dict = {"code": code or error_code(status), "message": message}
    if fields is not None:
        body["fields"] = fields
    body.update(extra or {})
    return {"error": body}


def error_response(status: int, message: str, *, headers: dict | None = None, **document):
    """A Flask response in the one error format (DOCUMENT: ``code``, ``fields``, ``extra`` of
    :func:`error_document`)."""
    response = jsonify(error_document(status, message, **document))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


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

    def reset(self) -> None:
        """Redis just answered (a /readyz probe): calls may try it again at once."""
        self._until = 0.0


#: What a client is told when Redis is away, or when something failed on our side: never the
#: exception's own text, which may hold addresses, keys or internals.
UNAVAILABLE_MESSAGE = "the decision store is unreachable; try again later"
INTERNAL_MESSAGE = "internal error"


def retry_after_headers() -> dict[str, str]:
    """The Retry-After header of a 503."""
    return {"Retry-After": str(current_app.config["SETTINGS"].retry_after_s)}


def unavailable_response():
    """The one answer to any call while Redis is unreachable: 503 with Retry-After."""
    return error_response(503, UNAVAILABLE_MESSAGE, headers=retry_after_headers())


def redis_failure(exc: BaseException, rl=None) -> int:
    """Count, log and classify a Redis error met while answering a request (API or console).

    An outage trips the app's breaker and is a 503; any other Redis error is a command Redis
    refused (WRONGTYPE, a bad argument…), a bug of ours and not an outage, so a 500 without
    "try again later". Returns the status to answer with.
    """
    rl = rl or current_app.extensions["regionlock"]
    rl.metrics.redis_error(exc)
    if not is_outage(exc):
        log.error("redis refused a command", exc_info=exc)
        return 500
    log.warning("redis unavailable: %s", type(exc).__name__)
    rl.breaker.trip()
    return 503


def exception_headers(exc: HTTPException) -> dict[str, str]:
    """The headers an HTTP error carries besides its body's type (405: Allow)."""
    return {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}


def api_error_response(exc: ApiError):
    """The one payload for an ApiError."""
    return error_response(
        exc.status,
        exc.message,
        code=exc.code,
        fields=exc.fields,
        extra=exc.extra,
        headers=exc.headers,
    )


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that give every error the one payload."""

    app.register_error_handler(ApiError, api_error_response)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages")
        if status == 422 and messages is not None:
            # flask-smorest/webargs: messages keyed by location ("json", "query").
            fields: dict[str, list[str]] = {}
            for location_messages in messages.values():
                fields.update(flatten_messages(location_messages, root="_schema"))
            return error_response(422, "the request has invalid fields", fields=fields)
        if status == 400 and messages is not None:
            return error_response(400, "the body is not valid JSON")
        message = exc.description if status < 500 else INTERNAL_MESSAGE
        return error_response(status, message, headers=exception_headers(exc))

    @app.errorhandler(redis.exceptions.RedisError)
    @app.errorhandler(redis.exceptions.RedisClusterException)
    def _redis_down(exc: Exception):
        if redis_failure(exc) == 503:
            return unavailable_response()
        return error_response(500, INTERNAL_MESSAGE)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, INTERNAL_MESSAGE)
