"""Idempotency-Key records shared by every state-changing call (docs/decisions.md, "Override
changes: atomic, conditional, applied at most once" and "Idempotency-Key on every
state-changing call").

A call is an :class:`Operation`: named by a digest of the caller's token name and key (or a
random id when the caller sent none), with a fingerprint of the request. Its record (the
fingerprint and the first answer) is written by the same script or EXEC as the change, so the
same call sent again is answered with the first answer instead of being applied twice.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import orjson
import redis as redis_lib

#: How long the result of a call made with an Idempotency-Key is kept (and replayed).
IDEMPOTENCY_TTL_S = 24 * 3600
#: How long the record of a call made without one is kept: long enough to recognise the same
#: write sent again by the Redis client after a lost reply.
ANONYMOUS_TTL_S = 600
#: The longest Idempotency-Key accepted.
MAX_IDEMPOTENCY_KEY = 200

#: What a caller is told when a write was sent but its outcome could not be learnt.
OUTCOME_UNKNOWN_MESSAGE = (
    "the decision store did not answer in time: the change may or may not have been applied; "
    "retry with the same Idempotency-Key to apply it at most once and learn its outcome"
)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before for another request."""


class OutcomeUnknown(Exception):
    """A write was sent to Redis but no answer came back: it may or may not have been applied.
    The Redis error is the ``__cause__``."""


def execute_write(pipe) -> list:
    """EXEC a transaction of writes: a connection lost or timed out once it was sent is
    OutcomeUnknown (it may or may not have been applied), never a plain outage."""
    try:
        return pipe.execute()
    except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
        raise OutcomeUnknown(OUTCOME_UNKNOWN_MESSAGE) from exc


@dataclass(frozen=True, slots=True)
class Operation:
    """One state-changing call, for its idempotency record: DIGEST names it (a digest of the
    caller's token name and Idempotency-Key, or of a random id), FINGERPRINT is a digest of the
    request (a key reused for another request is refused; "" for an anonymous call), TTL_S how
    long the record is kept."""

    digest: str
    fingerprint: str
    ttl_s: int

    @property
    def named(self) -> bool:
        """True when the caller named the call (sent an Idempotency-Key)."""
        return bool(self.fingerprint)


def request_fingerprint(method: str, path: str, body: object) -> str:
    """A digest of a request (method, path, parsed body): a reused Idempotency-Key is
    recognised by it."""
    data = orjson.dumps([method, path, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()


def named_operation(principal_name: str, key: str, fingerprint: str) -> Operation:
    """The operation named by a caller's Idempotency-Key (scoped to the caller's token name)."""
    digest = hashlib.sha256(orjson.dumps([principal_name, key])).hexdigest()
    return Operation(digest=digest, fingerprint=fingerprint, ttl_s=IDEMPOTENCY_TTL_S)


def anonymous_operation() -> Operation:
    """A call made without an Idempotency-Key: a random name, so the write is still applied
    at most once if the Redis client sends it again."""
    return Operation(digest=secrets.token_hex(16), fingerprint="", ttl_s=ANONYMOUS_TTL_S)


def check_fingerprint(record: dict, operation: Operation) -> None:
    """Raise IdempotencyConflict when RECORD (of OPERATION's name) was stored for another
    request."""
    if record.get("fingerprint") != operation.fingerprint:
        raise IdempotencyConflict("the Idempotency-Key was used for another request")


def encode_record(operation: Operation, result: dict) -> bytes:
    """The stored form of OPERATION's record: its fingerprint and RESULT (the first answer)."""
    return orjson.dumps({"fingerprint": operation.fingerprint, **result})


def decode_record(raw: str | bytes | None) -> dict | None:
    """A stored record (None for none)."""
    return orjson.loads(raw) if raw else None
