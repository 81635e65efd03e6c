"""Abuse resistance: per-token rate limits (flask-limiter on the service's Redis) and the
security headers every response carries.

``POST /v1/checkin`` with a valid token is not counted here: one device token is shared by a
whole fleet, so check-ins are limited per device (IMEI) and fleet-wide by the check-in's own
read (service/devices/checkin.py CheckinLimits).

Rate limits are counted per token (keyed by the token's *name*, never the secret) with a limit
chosen by its role, and per client IP for /v1 calls without a valid token. They are shared by
every /v1 route (one budget per token, not per endpoint). ``/v1/keys`` and the OpenAPI document
are exempt: they are served from memory and must stay reachable while Redis is down.

When Redis (the limiter's storage too) cannot be reached, the limiter's Redis error reaches the
app's RedisError handler: the caller gets the documented 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import math
import time

import redis
from flask import Flask, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

from service.config import Settings
from service.store import keys
from service.web.auth import CHECKIN_PATH, current_principal
from service.web.client import client_ip
from service.web.errors import error_response

# Served from memory, never need Redis, so they are not limited (and not counted).
UNLIMITED_PATHS = frozenset({"/v1/keys", "/v1/openapi.json"})


def _settings() -> Settings:
    return current_app.extensions["regionlock"].settings


def _client_address() -> str:
    settings = _settings()
    return (
        client_ip(
            request.remote_addr, request.headers.get("X-Forwarded-For"), settings.trusted_proxies
        )
        or get_remote_address()
        or "unknown"
    )


def rate_limit_key() -> str:
    """The bucket of this request: ``token:<name>`` for a valid token, else ``ip:<address>``."""
    principal = current_principal()
    if principal is not None:
        return f"token:{principal.name}"
    return f"ip:{_client_address()}"


def rate_limit_value() -> str:
    """The limit of this request's bucket: by the token's role, ``anonymous`` without one."""
    principal = current_principal()
    role = principal.role if principal is not None else "anonymous"
    limits = _settings().rate_limits
    return limits.get(role) or limits["anonymous"]


def _not_limited_here() -> bool:
    """Requests flask-limiter leaves alone: outside /v1, served from memory, and check-ins
    with a valid token (limited per device and fleet by the check-in itself, in its own
    device read: devices/checkin.py CheckinLimits). Check-ins without one stay limited per IP."""
    path = request.path
    if not path.startswith("/v1/") or path in UNLIMITED_PATHS:
        return True
    return path == CHECKIN_PATH and current_principal() is not None


def limiter_storage_uri(redis_url: str, cluster: bool) -> str:
    """The limits-library URI of the service's Redis (its cluster scheme for a cluster)."""
    if cluster:
        scheme, sep, rest = redis_url.partition("://")
        return f"{scheme}+cluster{sep}{rest}"
    return redis_url


def init_rate_limits(app: Flask, settings: Settings, cluster: bool = False) -> Limiter:
    """Attach flask-limiter to APP, storing counters in the service's Redis."""
    assert settings.redis_url
    limiter = Limiter(
        key_func=rate_limit_key,
        application_limits=[rate_limit_value],
        storage_uri=limiter_storage_uri(settings.redis_url, cluster),
        storage_options={
            # Same fail-fast bounds as the app's own client: an outage is a quick 503.
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_timeout_s,
            "key_prefix": keys.RATE_LIMITS_PREFIX,
        },
        strategy="sliding-window-counter",
        # Errors propagate to the RedisError handler (503); swallowing them would log a
        # traceback per request during an outage and then fail later anyway.
        swallow_errors=False,
        # X-RateLimit-* headers cost one more Redis call per request; Retry-After is set on
        # 429 by the handler below instead.
        headers_enabled=False,
    )
    limiter.request_filter(_not_limited_here)
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        return error_response(
            429,
            "too many requests for this token; slow down",
            headers={"Retry-After": str(_retry_after(limiter, exc))},
        )

    return limiter


def _retry_after(limiter: Limiter, exc: RateLimitExceeded) -> int:
    """Whole seconds until the breached window lets a request through again."""
    window_s = max(1, int(exc.limit.limit.get_expiry()))
    current = limiter.current_limit
    try:
        if current is not None:
            # reset_at is rounded up to the next whole second; never more than one window.
            return min(window_s, max(1, math.ceil(current.reset_at - time.time())))
    except redis.RedisError:
        pass  # the storage went away meanwhile: the window's length is a safe upper bound
    return window_s


_EVERY_RESPONSE = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
# JSON only: nothing on these pages may load, run or be framed.
_API = (
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Cache-Control", "no-store"),
)
_PAGES = (("Content-Security-Policy", "frame-ancestors 'none'"),)
# Only over TLS (RFC 6797 §7.2); behind a TLS-terminating proxy, the proxy sets it.
_TLS = (("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),)


def security_header_pairs(path: str, secure: bool) -> tuple[tuple[str, str], ...]:
    """The security headers of a response to PATH (over TLS when SECURE), as (name, value)."""
    pairs = _EVERY_RESPONSE + (_API if path.startswith("/v1/") else _PAGES)
    return pairs + _TLS if secure else pairs


def security_headers(response):
    """Headers every response carries; routes may set their own Cache-Control or CSP first."""
    headers = response.headers
    for name, value in security_header_pairs(request.path, request.is_secure):
        headers.setdefault(name, value)
    return response
