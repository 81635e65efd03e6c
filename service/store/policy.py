"""Published policy versions: an append-only history and the number of the active one."""

from __future__ import annotations

import time

import orjson
import redis as redis_lib

from service.store import keys
from service.store.audit import add_entry, write_deferred


class VersionConflict(Exception):
    """The active version is not the one the publisher expected."""

    def __init__(self, active: int | None):
        super().__init__(f"active version is {active}")
        self.active = active


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

    def publish(
        self,
        bundle: dict,
        published_by: str,
        note: str,
        expected_version: int | None,
        audit_fields: dict | None = None,
        compiled: bytes | None = None,
    ) -> dict:
        """Append BUNDLE as the next version and make it active, if the active version is still
        EXPECTED_VERSION (None: nothing published yet). Raises VersionConflict otherwise.

        COMPILED, the policy's snapshot (CompiledPolicy.to_snapshot), is stored with it so
        workers load the version without compiling it again. AUDIT_FIELDS, the entry recording
        the publish, is written by the same EXEC as the version."""
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(keys.POLICY_ACTIVE)
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
                        "bundle": bundle,
                    }
                    pipe.multi()
                    pipe.hset(keys.POLICY_VERSIONS, str(number), orjson.dumps(entry))
                    meta = {k: v for k, v in entry.items() if k != "bundle"}
                    pipe.hset(keys.POLICY_VERSION_META, str(number), orjson.dumps(meta))
                    if compiled is not None:
                        pipe.hset(keys.POLICY_COMPILED, str(number), compiled)
                    pipe.set(keys.POLICY_ACTIVE, number)
                    deferred: list[dict] = []
                    add_entry(self.redis, pipe, audit_fields, deferred)
                    pipe.execute()
                    break
                except redis_lib.WatchError:
                    continue
        write_deferred(self.redis, deferred)
        self.redis.publish(keys.POLICY_CHANNEL, str(number))
        return entry
