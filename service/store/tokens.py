"""API tokens: only a SHA-256 digest of each token is stored, never the token."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import orjson
import redis as redis_lib

from service.store import keys
from service.store.audit import add_entry, write_deferred

ROLES = ("device", "agent", "compliance", "editor", "auditor", "admin")
TOKEN_PREFIX = "rl_"


class TokenError(ValueError):
    """A token could not be created or revoked as asked."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and role."""

    name: str
    role: str


def digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Creates, revokes, lists and verifies tokens."""

    def __init__(self, redis):
        self.redis = redis

    def create(self, name: str, role: str, audit_fields: dict | None = None) -> str:
        """Make a token for NAME with ROLE and return it (the only time it is seen).

        Both hashes and the audit entry AUDIT_FIELDS (when given) are written by one
        transaction, watched on the name: two creators of one name, one wins, and no token
        exists without its entry (nor an entry without its token)."""
        if role not in ROLES:
            raise TokenError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
        if not name or len(name) > 100 or not name.isprintable():
            raise TokenError("name must be 1-100 printable characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_digest = digest(token)
        record = orjson.dumps({"name": name, "role": role, "created_at": time.time()})

        def write(pipe) -> None:
            deferred.clear()
            if pipe.hexists(keys.TOKENS_BY_NAME, name):
                raise TokenError(f"a token named {name!r} exists already; revoke it first")
            pipe.multi()
            pipe.hset(keys.TOKENS_BY_NAME, name, token_digest)
            pipe.hset(keys.TOKENS_BY_HASH, token_digest, record)
            add_entry(self.redis, pipe, audit_fields, deferred)

        deferred: list[dict] = []
        self._watched(write)
        write_deferred(self.redis, deferred)
        return token

    def revoke(self, name: str, audit_fields: dict | None = None) -> Principal:
        """Revoke the token called NAME, with its audit entry in the same transaction (the
        entry's detail gets the token's role); returns who it was."""
        revoked: list[Principal] = []

        def write(pipe) -> None:
            revoked.clear()
            deferred.clear()
            token_digest = pipe.hget(keys.TOKENS_BY_NAME, name)
            if token_digest is None:
                raise TokenError(f"no token named {name!r}")
            raw = pipe.hget(keys.TOKENS_BY_HASH, token_digest)
            role = orjson.loads(raw)["role"] if raw else "unknown"
            revoked.append(Principal(name=name, role=role))
            pipe.multi()
            pipe.hdel(keys.TOKENS_BY_HASH, token_digest)
            pipe.hdel(keys.TOKENS_BY_NAME, name)
            pipe.incr(keys.TOKENS_GENERATION)
            if audit_fields is not None:
                detail = {**orjson.loads(audit_fields["detail"]), "role": role}
                entry = {**audit_fields, "detail": orjson.dumps(detail)}
                add_entry(self.redis, pipe, entry, deferred)

        deferred: list[dict] = []
        self._watched(write)
        write_deferred(self.redis, deferred)
        return revoked[0]

    def _watched(self, write) -> None:
        """Run WRITE(pipe) under WATCH of the name hash until its MULTI goes through."""
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(keys.TOKENS_BY_NAME)
                    write(pipe)
                    pipe.execute()
                    return
                except redis_lib.WatchError:
                    continue

    def list(self) -> list[dict]:
        """Every token's name, role and creation time (never the token or its digest)."""
        rows = []
        for raw in self.redis.hvals(keys.TOKENS_BY_HASH):
            record = orjson.loads(raw)
            rows.append(
                {"name": record["name"], "role": record["role"], "created_at": record["created_at"]}
            )
        return sorted(rows, key=lambda r: r["name"])

    def verify(self, token: str) -> Principal | None:
        """The principal of a presented token, or None when unknown or revoked."""
        return self.verify_digest(digest(token))

    def generation(self, pipe) -> None:
        """Queue the read of the revocation counter on PIPE (its reply: :func:`as_generation`)."""
        pipe.get(keys.TOKENS_GENERATION)

    def verify_at(self, token_digest: str) -> tuple[Principal | None, int]:
        """The principal of a token given by its digest (or None) and the revocation counter
        read before it, in one round trip: a revocation landing between the two reads bumps the
        counter after the value returned, so the pair is never "valid at the newer count"."""
        pipe = self.redis.pipeline(transaction=False)
        self.generation(pipe)
        pipe.hget(keys.TOKENS_BY_HASH, token_digest)
        generation, raw = pipe.execute()
        return _principal(raw), as_generation(generation)

    def verify_digest(self, token_digest: str) -> Principal | None:
        """The principal of a token given by its digest, or None."""
        # Looked up by digest: the secret itself is never compared byte by byte, so the
        # lookup leaks nothing useful through timing (revoke removes the digest in MULTI).
        return _principal(self.redis.hget(keys.TOKENS_BY_HASH, token_digest))


def as_generation(raw) -> int:
    """The revocation counter from its stored value (0 before the first revocation)."""
    return int(raw) if raw else 0


def _principal(raw) -> Principal | None:
    if raw is None:
        return None
    record = orjson.loads(raw)
    return Principal(name=record["name"], role=record["role"])
