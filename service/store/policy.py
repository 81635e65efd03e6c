"""Published policy versions: an append-only history and the number of the active one."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis as redis_lib

from service.store import keys
from service.store.audit import add_entry, write_deferred
from service.store.idempotency import (
    Operation,
    decode_record,
    encode_record,
    execute_write,
)


class VersionConflict(Exception):
    """The active version is not the one the publisher expected."""

    def __init__(self, active: int | None):
        super().__init__(f"active version is {active}")
        self.active = active


class AlreadyPublished(Exception):
    """The publish's operation (its Idempotency-Key) was applied before: RECORD is what it
    stored (the fingerprint, ``entry``: the version's metadata, and the caller's result)."""

    def __init__(self, record: dict):
        super().__init__("already published")
        self.record = record


@dataclass(frozen=True, slots=True)
class LinkedWrite:
    """Writes that belong to a publish and go into its MULTI/EXEC (closing the approval request
    it carries out, SPEC §12.4): WATCH these keys too; CHECK(pipe) runs after the WATCH and may
    raise (nothing is written); QUEUE(pipe) queues the writes after MULTI and returns the audit
    entries to add."""

    watch: tuple[str, ...]
    check: Callable[[Any], None]
    queue: Callable[[Any], list[dict]]


class PolicyStore:
    """Reads and publishes versions; a publish is one optimistic transaction."""

    def __init__(self, redis):
        self.redis = redis

    def active_version(self) -> int | None:
        """Number of the active version, None before the first publish."""
        raw = self.redis.get(keys.POLICY_ACTIVE)
        return int(raw) if raw is not None else None

    def version(self, number: int) -> dict | None:
        """One version: {version, bundle, published_at, published_by, note}."""
        raw = self.redis.hget(keys.POLICY_VERSIONS, str(number))
        return orjson.loads(raw) if raw is not None else None

    def compiled(self, number: int) -> str | None:
        """The stored snapshot of version NUMBER's compiled policy, if one was stored."""
        return self.redis.hget(keys.POLICY_COMPILED, str(number))

    def versions(self) -> list[dict]:
        """Every version's metadata (no bundle), oldest first."""
        rows = [orjson.loads(raw) for raw in self.redis.hvals(keys.POLICY_VERSION_META)]
        return sorted(rows, key=lambda e: e["version"])

    def operation_record(self, digest: str) -> dict | None:
        """The stored record of a publish or rollback named DIGEST (None when none)."""
        return decode_record(self.redis.get(keys.policy_idempotency(digest)))

    def publish(
        self,
        bundle: dict,
        published_by: str,
        note: str,
        expected_version: int | None,
        audit_fields: dict | None = None,
        compiled: bytes | None = None,
        operation: Operation | None = None,
        result: dict | None = None,
        linked: LinkedWrite | None = None,
        meta: dict | None = None,
    ) -> dict:
        """Append BUNDLE as the next version and make it active, if the active version is still
        EXPECTED_VERSION (None: nothing published yet). Raises VersionConflict otherwise.

        COMPILED, the policy's snapshot (CompiledPolicy.to_snapshot), is stored with it so
        workers load the version without compiling it again. AUDIT_FIELDS, the entry recording
        the publish, is written by the same EXEC as the version.

        OPERATION, when the caller named it (an Idempotency-Key), has its record (the version's
        metadata and RESULT) written by that EXEC too: when it is there already, nothing is
        written and AlreadyPublished carries it. A lost answer to the EXEC raises
        OutcomeUnknown (the version may or may not be published).

        LINKED (four eyes, SPEC §12.4): writes made by the same EXEC; META: further fields of the
        version's metadata (``approved_by``, ``approval``)."""
        named = operation is not None and operation.named
        record_key = keys.policy_idempotency(operation.digest) if named else None
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if record_key is not None:
                        pipe.watch(keys.POLICY_ACTIVE, record_key)
                        prior = decode_record(pipe.get(record_key))
                        if prior is not None:
                            raise AlreadyPublished(prior)
                    else:
                        pipe.watch(keys.POLICY_ACTIVE)
                    if linked is not None:
                        pipe.watch(*linked.watch)
                        linked.check(pipe)
                    raw = pipe.get(keys.POLICY_ACTIVE)
                    active = int(raw) if raw is not None else None
                    if active != expected_version:
                        raise VersionConflict(active)
                    number = (active or 0) + 1
                    entry = {
                        "version": number,
                        "published_at": time.time(),
                        "published_by": published_by,
                        "note": note,
                        **(meta or {}),
                        "bundle": bundle,
                    }
                    pipe.multi()
                    pipe.hset(keys.POLICY_VERSIONS, str(number), orjson.dumps(entry))
                    meta = {k: v for k, v in entry.items() if k != "bundle"}
                    pipe.hset(keys.POLICY_VERSION_META, str(number), orjson.dumps(meta))
                    if compiled is not None:
                        pipe.hset(keys.POLICY_COMPILED, str(number), compiled)
                    pipe.set(keys.POLICY_ACTIVE, number)
                    if record_key is not None:
                        record = encode_record(operation, {"entry": meta, **(result or {})})
                        pipe.set(record_key, record, ex=operation.ttl_s)
                    deferred: list[dict] = []
                    add_entry(self.redis, pipe, audit_fields, deferred)
                    for linked_fields in linked.queue(pipe) if linked is not None else ():
                        add_entry(self.redis, pipe, linked_fields, deferred)
                    execute_write(pipe)
                    break
                except redis_lib.WatchError:
                    continue
        write_deferred(self.redis, deferred)
        self.redis.publish(keys.POLICY_CHANNEL, str(number))
        return entry
