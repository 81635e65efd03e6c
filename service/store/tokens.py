"""API tokens: only a SHA-256 digest of each token is stored, never the token."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import orjson

from service.store import keys

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

    def create(self, name: str, role: str) -> str:
        """Make a token for NAME with ROLE and return it (the only time it is seen)."""
        if role not in ROLES:
            raise TokenError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
        if not name or len(name) > 100 or not name.isprintable():
            raise TokenError("name must be 1-100 printable characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_digest = digest(token)
        record = orjson.dumps({"name": name, "role": role, "created_at": time.time()})
        # HSETNX on the name makes creation race-free: two creators of one name, one wins.
        if not self.redis.hsetnx(keys.TOKENS_BY_NAME, name, token_digest):
            raise TokenError(f"a token named {name!r} exists already; revoke it first")
        self.redis.hset(keys.TOKENS_BY_HASH, token_digest, record)
        return token

    def revoke(self, name: str) -> Principal:
        """Revoke the token called NAME; returns who it was."""
        token_digest = self.redis.hget(keys.TOKENS_BY_NAME, name)
        if token_digest is None:
            raise TokenError(f"no token named {name!r}")
        raw = self.redis.hget(keys.TOKENS_BY_HASH, token_digest)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(keys.TOKENS_BY_HASH, token_digest)
        pipe.hdel(keys.TOKENS_BY_NAME, name)
        pipe.execute()
        role = orjson.loads(raw)["role"] if raw else "unknown"
        return Principal(name=name, role=role)

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

    def verify_digest(self, token_digest: str) -> Principal | None:
        """The principal of a token given by its digest, or None."""
        # Looked up by digest: the secret itself is never compared byte by byte, so the
        # lookup leaks nothing useful through timing (revoke removes the digest in MULTI).
        raw = self.redis.hget(keys.TOKENS_BY_HASH, token_digest)
        if raw is None:
            return None
        record = orjson.loads(raw)
        return Principal(name=record["name"], role=record["role"])
