"""``POST /v1/checkin`` answered by the server without Flask's request machinery (issue 17).

Routing, the request and response objects, the hooks and the error handlers of Flask took
about as much of a check-in's time as deciding it did (docs/performance.md, "Check-in speed").
The server's RSGI bridge (web/rsgi.py) hands a check-in here first, on the worker's event
loop, where many are in flight at once. What is answered here is what the
Flask route answers (routes.py, through the same ``signed_verdict``), with the same headers,
log line and metrics; ``tests/test_checkin_direct.py`` sends the same requests both ways.

Only the ordinary check-in is answered here: a caller whose token the worker's cache holds
(confirmed in the device read, as on the Flask route) and whose role may check in, with a body
the compiled validator accepts, while the deployment is ready and Redis is not known to be
away. Anything else returns None before anything is read or written, and the bridge gives the
request to Flask, which answers it as it always did (401, 403, 400, 422, 503, and the first
check-in of a token this worker has not verified yet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import redis
from marshmallow import ValidationError

from service.api.checkin.answer import signed_verdict, signed_verdict_async
from service.api.checkin.schemas import CheckinSchema
from service.api.compiled_schema import compile_schema
from service.engine.roles import PERMISSIONS
from service.store.coalesced import CoalescedConnection, connection_for
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
    """``await handle_async(...)`` (the server, on a worker's event loop) or ``handle(...)``
    (blocking) answers a check-in, or returns None for Flask to answer it."""

    method = "POST"
    path = CHECKIN_PATH

    def __init__(self, app):
        self.rl = app.extensions["regionlock"]
        self.load = compile_schema(CheckinSchema())
        self.roles = PERMISSIONS["checkin"]
        self._loop = None
        self._coalesced: CoalescedConnection | None = None
        # The headers every answer carries, over plain HTTP and over TLS.
        self._headers = {
            secure: (_JSON, *security_header_pairs(self.path, secure)) for secure in (False, True)
        }

    def handle(
        self, headers: Mapping[str, str], body: bytes, peer: str | None, secure: bool
    ) -> Answer | None:
        """The answer to a check-in whose (lower-case) HEADERS and BODY came from PEER over
        TLS when SECURE; None: not one answered here (nothing was read or written)."""
        accepted = self._accept(headers, body, peer)
        if accepted is None:
            return None
        try:
            content = signed_verdict(self.rl, *accepted.arguments)
        except Exception as exc:
            return self._answer(accepted, secure, *self._failure(exc))
        return self._answer(accepted, secure, 200, (), content)

    async def handle_async(
        self, headers: Mapping[str, str], body: bytes, peer: str | None, secure: bool
    ) -> Answer | None:
        """:meth:`handle` on the worker's event loop: the check-in's two Redis calls go out
        with those of the other check-ins in flight (store/coalesced.py), and the loop serves
        others while Redis answers. Where that connection cannot be made (a Redis Cluster,
        TLS), :meth:`handle` runs instead."""
        connection = self._connection()
        if connection is None:
            return self.handle(headers, body, peer, secure)
        accepted = self._accept(headers, body, peer)
        if accepted is None:
            return None
        try:
            content = await signed_verdict_async(self.rl, connection, *accepted.arguments)
        except Exception as exc:
            return self._answer(accepted, secure, *self._failure(exc))
        return self._answer(accepted, secure, 200, (), content)

    def _accept(self, headers: Mapping[str, str], body: bytes, peer: str | None):
        """The check-in to answer here, or None (Flask answers it)."""
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
            checkin = self.load(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return None
        principal, check = cached
        ip = client_ip(peer, headers.get("x-forwarded-for"), rl.settings.trusted_proxies)
        return _Accepted(
            started,
            request_id_for(headers.get("x-request-id")),
            (checkin, body, ip, headers.get("x-device-proof"), principal.role, check),
        )

    def _answer(self, accepted: _Accepted, secure: bool, status: int, extra, content) -> Answer:
        """The response, counted and logged as the app's hooks would."""
        answer_headers = [*self._headers[secure], *extra, ("X-Request-Id", accepted.request_id)]
        self.rl.metrics.observe_request(self.path, self.method, status)
        duration_ms = round((time.perf_counter() - accepted.started) * 1000, 2)
        log_request(accepted.request_id, self.method, self.path, status, duration_ms)
        return status, answer_headers, content

    def _connection(self) -> CoalescedConnection | None:
        """This event loop's coalescing connection to Redis (made at first use)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._coalesced = connection_for(self.rl.redis, self.rl.settings.redis_timeout_s)
        return self._coalesced

    def _failure(self, exc: Exception) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        """What the app's error handlers answer to EXC (web/errors.py)."""
        if isinstance(exc, ApiError):
            content = _error(exc.status, exc.message, exc.code, exc.fields, exc.extra)
            return exc.status, tuple(exc.headers.items()), content
        if isinstance(exc, _REDIS_ERRORS):
            if redis_failure(exc, self.rl) == 503:
                retry = (("Retry-After", str(self.rl.settings.retry_after_s)),)
                return 503, retry, _error(503, UNAVAILABLE_MESSAGE)
        else:
            log.exception("unhandled error", exc_info=exc)
        return 500, (), _error(500, INTERNAL_MESSAGE)


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A check-in the direct path answers: when it came in, its request id, and the
    arguments of ``signed_verdict`` after ``rl`` (body, raw body, ip, proof, role, check)."""

    started: float
    request_id: str
    arguments: tuple


def _error(status: int, message: str, code=None, fields=None, extra=None) -> bytes:
    return orjson.dumps(error_document(status, message, code, fields, extra))
