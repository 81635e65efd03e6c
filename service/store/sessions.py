"""Console sessions kept in Redis (issue 12.9): signing out or revoking the token ends them.

The browser's cookie holds only a random session id. Redis keeps, under the SHA-256 of that id,
who signed in (the token's name, role and digest, so each click re-checks the token) and the
session's CSRF secret, with the idle timeout as TTL, refreshed by each request. Any host reads
the same record, so a session started on one host works on every other and ends on all of them
at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from service.store import keys


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """One signed-in session as Redis keeps it."""

    name: str
    role: str
    token_digest: str
    csrf: str
    created_at: float


def _key(session_id: str) -> str:
    return keys.console_session(hashlib.sha256(session_id.encode()).hexdigest())


class ConsoleSessionStore:
    """Starts, reads (touching the idle timeout) and ends console sessions."""

    def __init__(self, redis, idle_s: int):
        self.redis = redis
        self.idle_s = idle_s

    def start(self, name: str, role: str, token_digest: str) -> tuple[str, ConsoleSession]:
        """A new session for the token NAME: its random id (for the cookie) and its record."""
        session_id = secrets.token_urlsafe(32)
        record = ConsoleSession(name, role, token_digest, secrets.token_urlsafe(32), time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            _key(session_id),
            mapping={
                "name": record.name,
                "role": record.role,
                "token": record.token_digest,
                "csrf": record.csrf,
                "created_at": repr(record.created_at),
            },
        )
        pipe.expire(_key(session_id), self.idle_s)
        pipe.execute()
        return session_id, record

    def get(self, session_id: str) -> ConsoleSession | None:
        """The live session SESSION_ID (its idle timeout restarted), or None once it ended."""
        if not session_id or len(session_id) > 100:
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(_key(session_id))
        pipe.expire(_key(session_id), self.idle_s)
        fields, _ = pipe.execute()
        try:
            return ConsoleSession(
                fields["name"],
                fields["role"],
                fields["token"],
                fields["csrf"],
                float(fields["created_at"]),
            )
        except (KeyError, ValueError):
            # Gone (signed out, timed out) or half-written: not a session.
            return None

    def end(self, session_id: str) -> None:
        """End SESSION_ID on every host."""
        if session_id and len(session_id) <= 100:
            self.redis.delete(_key(session_id))
