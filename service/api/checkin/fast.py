"""``POST /v1/checkin`` answered by the server without Flask's request machinery (issue 17).

Routing, the request and response objects, the hooks and the error handlers of Flask took
about as much of a check-in's time as deciding it did (docs/performance.md). The server's
RSGI bridge (web/rsgi.py) hands a check-in here first. What is answered here is what the
Flask route answers (routes.py, through the same ``signed_verdict``), with the same headers,
log line and metrics; ``tests/test_checkin_fast.py`` sends the same requests both ways.

Only the ordinary check-in is answered here: a caller whose token the worker's cache holds
(confirmed in the device read, as on the Flask route) and whose role may check in, with a body
the compiled validator accepts, while the deployment is ready and Redis is not known to be
away. Anything else returns None before anything is read or written, and the bridge gives the
request to Flask, which answers it as it always did (401, 403, 400, 422, 503, and the first
check-in of a token this worker has not verified yet).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import orjson
import redis
from marshmallow import ValidationError

from service.api.checkin.answer import signed_verdict
from service.api.checkin.schemas import CheckinSchema
from service.api.compiled_schema import compile_schema
from service.engine.roles import PERMISSIONS
from service.web.auth import CHECKIN_PATH, bearer_of
from service.web.client import client_ip
from service.web.errors import (
    INTERNAL_MESSAGE,
    UNAVAILABLE_MESSAGE,
    ApiError,
    error_document,
    redis_failure,
)
from service.web.hardening import security_header_pairs
from service.web.logs import log_request, request_id_for

log = logging.getLogger(__name__)

#: (status, headers, body) of an answer.
Answer = tuple[int, list[tuple[str, str]], bytes]

_JSON = ("Content-Type", "application/json")
_REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


class DirectCheckin:
    """``handle(...)`` answers a check-in, or returns None for Flask to answer it."""

    method = "POST"
    path = CHECKIN_PATH

    def __init__(self, app):
        self.rl = app.extensions["regionlock"]
        self.load = compile_schema(CheckinSchema())
        self.roles = PERMISSIONS["checkin"]

    def handle(
        self, headers: Mapping[str, str], body: bytes, peer: str | None, secure: bool
    ) -> Answer | None:
        """The answer to a check-in whose (lower-case) HEADERS and BODY came from PEER over
        TLS when SECURE; None: not one answered here (nothing was read or written)."""
        started = time.perf_counter()
        rl = self.rl
        token = bearer_of(headers.get("authorization", ""))
        checks = rl.deployment
        if token is None or rl.breaker.is_open() or checks.pending or checks.refused is not None:
            return None
        cached = rl.tokens.cached_for_checkin(token)
        if cached is None or cached[0].role not in self.roles:
            return None
        try:
            data = orjson.loads(body)
            checkin = self.load(data)
        except (orjson.JSONDecodeError, ValidationError):
            return None
        principal, check = cached
        request_id = request_id_for(headers.get("x-request-id"))
        ip = client_ip(peer, headers.get("x-forwarded-for"), rl.settings.trusted_proxies)
        status, extra = 200, ()
        try:
            content = signed_verdict(
                rl, checkin, body, ip, headers.get("x-device-proof"), principal.role, check
            )
        except ApiError as exc:
            status, extra = exc.status, tuple(exc.headers.items())
            content = _error(status, exc.message, exc.code, exc.fields, exc.extra)
        except Exception as exc:
            status, extra, content = self._failure(exc)
        answer_headers = [
            _JSON,
            *extra,
            *security_header_pairs(self.path, secure),
            ("X-Request-Id", request_id),
        ]
        rl.metrics.observe_request(self.path, self.method, status)
        log_request(
            request_id,
            self.method,
            self.path,
            status,
            round((time.perf_counter() - started) * 1000, 2),
        )
        return status, answer_headers, content

    def _failure(self, exc: Exception) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        """What the app's error handlers answer to EXC (web/errors.py)."""
        if isinstance(exc, _REDIS_ERRORS):
            if redis_failure(exc, self.rl) == 503:
                retry = (("Retry-After", str(self.rl.settings.retry_after_s)),)
                return 503, retry, _error(503, UNAVAILABLE_MESSAGE)
        else:
            log.exception("unhandled error", exc_info=exc)
        return 500, (), _error(500, INTERNAL_MESSAGE)


def _error(status: int, message: str, code=None, fields=None, extra=None) -> bytes:
    return orjson.dumps(error_document(status, message, code, fields, extra))
