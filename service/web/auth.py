"""Bearer tokens and the permission table of SPEC §3."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from flask import current_app, g, request

from service.engine.roles import PERMISSIONS
from service.store.tokens import Principal, TokenStore, digest
from service.web.errors import ApiError


class TokenCache:
    """Verified tokens kept briefly per worker, so a check-in costs no extra round trip.

    A revoked token keeps working in a worker for at most ``ttl_s`` seconds.
    """

    def __init__(self, store: TokenStore, ttl_s: float):
        self.store = store
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def principal(self, token: str) -> Principal | None:
        """The principal of TOKEN, from the cache while fresh."""
        # Keyed by digest, like the store: the process never keeps presented secrets around.
        token_digest = digest(token)
        now = time.monotonic()
        hit = self._entries.get(token_digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = self.store.verify_digest(token_digest)
        if principal is not None and self.ttl_s > 0:
            with self._lock:
                if len(self._entries) > 10_000:
                    self._entries.clear()
                self._entries[token_digest] = (now + self.ttl_s, principal)
        return principal

    def forget(self) -> None:
        """Drop every cached token (after a revocation in this process)."""
        with self._lock:
            self._entries.clear()


def bearer_token() -> str | None:
    """The token of the Authorization header, if it is a Bearer one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_principal() -> Principal | None:
    """The caller of this request (None: no token, or an unknown one), looked up once per
    request: the rate limiter and the permission check share the answer."""
    if "_principal" not in g:
        token = bearer_token()
        g._principal = (
            current_app.extensions["regionlock"].tokens.principal(token) if token else None
        )
    return g._principal


def authenticate() -> Principal:
    """The caller, or 401."""
    if bearer_token() is None:
        raise ApiError(401, "a Bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    principal = current_principal()
    if principal is None:
        raise ApiError(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def require(permission: str) -> Callable:
    """View decorator: 401 without a valid token, 403 when its role lacks PERMISSION."""
    roles = PERMISSIONS[permission]

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            principal = authenticate()
            if principal.role not in roles:
                raise ApiError(403, f"the {principal.role} role may not do this ({permission})")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper

    return decorator
