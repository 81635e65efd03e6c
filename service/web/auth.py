"""Bearer tokens and the permission table of SPEC §3."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from flask import current_app, g, request

from service.engine.roles import PERMISSIONS
from service.store.tokens import Principal, TokenStore, as_generation, digest
from service.web.errors import ApiError, is_outage

#: How long a token verified by this worker is still believed while Redis is away, for the
#: calls that may be answered from memory (``GET /v1/keys``).
LAST_KNOWN_S = 24 * 3600.0
_MAX_ENTRIES = 10_000


#: The check-in's path: its token is confirmed by the device read (:class:`TokenCheck`).
CHECKIN_PATH = "/v1/checkin"
#: How long a check-in believes a token this worker verified, provided every check-in's own
#: device read sees the revocation counter unchanged (a bound in case a token is removed
#: from Redis by hand, not through ``TokenStore.revoke``).
CHECKIN_TRUST_S = 60.0


class TokenCache:
    """Verified tokens kept briefly per worker, so a check-in costs no extra round trip.

    A revoked token keeps working in a worker for at most ``ttl_s`` seconds. Check-ins believe
    an entry longer (:data:`CHECKIN_TRUST_S`), but each one reads the revocation counter in its
    device read (:class:`TokenCheck`), so a revoked token is refused by the next check-in on
    every worker, with no round trip of its own. Apart from that,
    the worker remembers every token it verified (by digest) for ``LAST_KNOWN_S``: only calls
    answered from memory during a Redis outage (the public keys) believe that memory.
    """

    def __init__(self, store: TokenStore, ttl_s: float):
        self.store = store
        self.ttl_s = ttl_s
        # digest -> (verified at, principal, revocation counter read with it)
        self._entries: dict[str, tuple[float, Principal, int]] = {}
        self._last_known: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def principal(self, token: str) -> Principal | None:
        """The principal of TOKEN, from the cache while fresh."""
        # Keyed by digest, like the store: the process never keeps presented secrets around.
        token_digest = digest(token)
        hit = self._entries.get(token_digest)
        if hit is not None and hit[0] + self.ttl_s > time.monotonic():
            return hit[1]
        return self._verify(token_digest)

    def for_checkin(self, token: str) -> tuple[Principal | None, TokenCheck | None]:
        """The principal of TOKEN for a check-in and, when it came from the cache, the check
        the check-in's device read must pass (:class:`TokenCheck`); None: just verified."""
        cached = self.cached_for_checkin(token)
        if cached is not None:
            return cached
        return self._verify(digest(token)), None

    def cached_for_checkin(self, token: str) -> tuple[Principal, TokenCheck] | None:
        """The principal of TOKEN for a check-in and its :class:`TokenCheck`, when the worker's
        cache holds it (nothing is asked of Redis); None otherwise."""
        token_digest = digest(token)
        hit = self._entries.get(token_digest)
        if (
            hit is not None
            and self.ttl_s > 0
            and hit[0] + max(self.ttl_s, CHECKIN_TRUST_S) > time.monotonic()
        ):
            return hit[1], TokenCheck(self, token_digest, hit[2])
        return None

    def _verify(self, token_digest: str) -> Principal | None:
        """Ask Redis (one round trip) and remember the answer."""
        now = time.monotonic()
        principal, generation = self.store.verify_at(token_digest)
        with self._lock:
            if len(self._entries) > _MAX_ENTRIES:
                self._entries.clear()
            if len(self._last_known) > _MAX_ENTRIES:
                self._last_known.clear()
            if principal is not None and self.ttl_s > 0:
                self._entries[token_digest] = (now, principal, generation)
            else:
                self._entries.pop(token_digest, None)
            if principal is not None:
                self._last_known[token_digest] = (now + LAST_KNOWN_S, principal)
            else:
                self._last_known.pop(token_digest, None)
        return principal

    def last_known(self, token: str) -> Principal | None:
        """Who TOKEN belonged to when this worker last verified it (within LAST_KNOWN_S), without
        asking Redis; None for a token this worker has not verified."""
        hit = self._last_known.get(digest(token))
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1]

    def forget(self) -> None:
        """Drop every cached token (after a revocation in this process)."""
        with self._lock:
            self._entries.clear()
            self._last_known.clear()


class TokenCheck:
    """A cached token's confirmation, read along with the check-in's device read (one GET in
    its pipeline, no round trip of its own): while the revocation counter is the one read when
    the token was verified, no token was revoked since; when it moved, the token is verified
    again (one more round trip, only after a revocation) and a revoked one is refused 401
    before anything is decided or recorded. See ``devices/checkin.py`` ``ReadAlong``."""

    def __init__(self, cache: TokenCache, token_digest: str, generation: int):
        self._cache = cache
        self._digest = token_digest
        self._generation = generation

    def queue(self, pipe) -> int:
        """Queue the counter's read on the device read's PIPE; the number of replies."""
        self._cache.store.generation(pipe)
        return 1

    def read(self, replies: list) -> None:
        """401 when the counter moved and the token is no longer valid."""
        if as_generation(replies[0]) == self._generation:
            return
        if self._cache._verify(self._digest) is None:
            raise ApiError(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})


def bearer_token() -> str | None:
    """The token of the Authorization header, if it is a Bearer one."""
    return bearer_of(request.headers.get("Authorization", ""))


def bearer_of(header: str) -> str | None:
    """The token of an Authorization HEADER, if it is a Bearer one."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_principal() -> Principal | None:
    """The caller of this request (None: no token, or an unknown one), looked up once per
    request: the rate limiter and the permission check share the answer."""
    if "_principal" not in g:
        token = bearer_token()
        g.token_check = None
        if token is None:
            g._principal = None
        elif request.path == CHECKIN_PATH:
            # Confirmed by the check-in's device read (TokenCheck), not by a read of its own.
            g._principal, g.token_check = current_app.extensions["regionlock"].tokens.for_checkin(
                token
            )
        else:
            g._principal = current_app.extensions["regionlock"].tokens.principal(token)
    return g._principal


def authenticate() -> Principal:
    """The caller, or 401."""
    if bearer_token() is None:
        raise ApiError(401, "a Bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    principal = current_principal()
    if principal is None:
        raise ApiError(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def authenticate_from_memory() -> Principal:
    """The caller, or 401, for calls answered from memory while Redis is away: when the
    token cannot be looked up (outage), the worker's memory of it decides; a token this worker
    never verified then gets the outage's 503 (it may be valid: we cannot tell)."""
    token = bearer_token()
    if token is None:
        raise ApiError(401, "a Bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    rl = current_app.extensions["regionlock"]
    remembered = rl.tokens.last_known(token)
    if remembered is not None and rl.breaker.is_open():
        return remembered  # Redis is known to be away: do not wait for its timeouts
    try:
        return authenticate()
    except Exception as exc:
        if remembered is None or not is_outage(exc):
            raise
        rl.breaker.trip()
        return remembered


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
