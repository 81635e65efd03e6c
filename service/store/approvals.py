"""Approval requests of four eyes on sanctions (SPEC §12.4): a publish or rollback that weakens a
``sanctioned_region`` rule, kept until a compliance officer or admin decides it.

Each request is one JSON string (``keys.policy_approval``) in the policy's slot, with a TTL: 7
days while pending (then it expires unanswered), 7 more days once closed (so its requester can
read the outcome). ``keys.POLICY_APPROVALS_PENDING`` indexes the pending ones by expiry. Every
state change writes its audit entry in the same MULTI/EXEC.
"""

from __future__ import annotations

import time
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
from service.store.policy import AlreadyPublished, LinkedWrite

#: How long a request waits for a decision before it expires.
APPROVAL_PENDING_S = 7 * 86_400
#: How long a decided, withdrawn, stale or expired request stays readable.
APPROVAL_CLOSED_S = 7 * 86_400

PENDING = "pending"


class ApprovalMissing(LookupError):
    """No request has this id (never made, or expired and forgotten)."""


class ApprovalClosed(Exception):
    """The request is no longer pending: RECORD says what became of it."""

    def __init__(self, record: dict):
        super().__init__(f"approval {record['id']} is {record['state']}")
        self.record = record


def _encode(record: dict) -> bytes:
    return orjson.dumps(record)


def is_pending(record: dict, now: float) -> bool:
    """True when RECORD still waits for a decision (pending and not expired)."""
    return record["state"] == PENDING and record["expires_at"] > now


class ApprovalStore:
    """Creates, reads and closes approval requests."""

    def __init__(self, redis):
        self.redis = redis

    def get(self, approval_id: str) -> dict | None:
        """One request (with its bundle), None when unknown; an expired pending one reads as
        ``state: expired``."""
        raw = self.redis.get(keys.policy_approval(approval_id))
        if raw is None:
            return None
        record = orjson.loads(raw)
        if record["state"] == PENDING and record["expires_at"] <= time.time():
            record = {**record, "state": "expired", "closed_at": record["expires_at"]}
        return record

    def pending(self) -> list[dict]:
        """The pending requests, oldest first (expired ones left out)."""
        now = time.time()
        ids = self.redis.zrangebyscore(keys.POLICY_APPROVALS_PENDING, f"({now}", "+inf")
        if not ids:
            return []
        raws = self.redis.mget([keys.policy_approval(i) for i in ids])
        records = [orjson.loads(raw) for raw in raws if raw is not None]
        records = [r for r in records if is_pending(r, now)]
        return sorted(records, key=lambda r: r["created_at"])

    def create(
        self,
        record: dict,
        audit_fields: dict,
        operation: Operation | None = None,
        result: dict | None = None,
    ) -> dict:
        """Store RECORD (a new pending request) with its audit entry, and OPERATION's record
        (an Idempotency-Key: the publish's, holding RESULT) in one EXEC. When OPERATION was
        applied before, nothing is written and AlreadyPublished carries its record."""
        named = operation is not None and operation.named
        record_key = keys.policy_idempotency(operation.digest) if named else None
        key = keys.policy_approval(record["id"])
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if record_key is not None:
                        pipe.watch(record_key)
                        prior = decode_record(pipe.get(record_key))
                        if prior is not None:
                            raise AlreadyPublished(prior)
                    pipe.multi()
                    pipe.set(key, _encode(record), ex=APPROVAL_PENDING_S + APPROVAL_CLOSED_S)
                    pipe.zadd(keys.POLICY_APPROVALS_PENDING, {record["id"]: record["expires_at"]})
                    # Forget the index entries of requests that expired unanswered.
                    pipe.zremrangebyscore(keys.POLICY_APPROVALS_PENDING, "-inf", time.time())
                    if record_key is not None:
                        assert operation is not None
                        pipe.set(
                            record_key, encode_record(operation, result or {}), ex=operation.ttl_s
                        )
                    deferred: list[dict] = []
                    add_entry(self.redis, pipe, audit_fields, deferred)
                    execute_write(pipe)
                    break
                except redis_lib.WatchError:
                    continue
        write_deferred(self.redis, deferred)
        return record

    def _checked(self, pipe, approval_id: str, check) -> dict:
        raw = pipe.get(keys.policy_approval(approval_id))
        if raw is None:
            raise ApprovalMissing(approval_id)
        record = orjson.loads(raw)
        if not is_pending(record, time.time()):
            if record["state"] == PENDING:
                record = {**record, "state": "expired", "closed_at": record["expires_at"]}
            raise ApprovalClosed(record)
        if check is not None:
            check(record)
        return record

    def _queue_close(self, pipe, record: dict, closing: dict) -> dict:
        closed = {**record, **closing, "closed_at": time.time()}
        pipe.set(keys.policy_approval(record["id"]), _encode(closed), ex=APPROVAL_CLOSED_S)
        pipe.zrem(keys.POLICY_APPROVALS_PENDING, record["id"])
        return closed

    def close(
        self,
        approval_id: str,
        closing: dict,
        audit_fields,
        check=None,
        operation: Operation | None = None,
    ) -> dict:
        """Close a pending request: merge CLOSING (``state``, ``decided_by``, ...) into it and
        write AUDIT_FIELDS (a dict, or a function of the record giving one) in one EXEC.
        CHECK(record) may raise to refuse. Raises ApprovalMissing or ApprovalClosed.

        OPERATION (a decision's Idempotency-Key) has its record, ``{"approval_record": the
        closed request without its bundle}``, written by the same EXEC; when it is there
        already nothing is written and AlreadyPublished carries it."""
        key = keys.policy_approval(approval_id)
        named = operation is not None and operation.named
        record_key = keys.policy_idempotency(operation.digest) if named else None
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key, *([record_key] if record_key else []))
                    if record_key is not None:
                        prior = decode_record(pipe.get(record_key))
                        if prior is not None:
                            raise AlreadyPublished(prior)
                    record = self._checked(pipe, approval_id, check)
                    pipe.multi()
                    closed = self._queue_close(pipe, record, closing)
                    if record_key is not None:
                        assert operation is not None
                        result = {"approval_record": public_record(closed)}
                        pipe.set(record_key, encode_record(operation, result), ex=operation.ttl_s)
                    fields = audit_fields(record) if callable(audit_fields) else audit_fields
                    deferred: list[dict] = []
                    add_entry(self.redis, pipe, fields, deferred)
                    execute_write(pipe)
                    break
                except redis_lib.WatchError:
                    continue
        write_deferred(self.redis, deferred)
        return closed

    def closing_publish(
        self, approval_id: str, closing: dict, audit_fields: dict, check=None
    ) -> LinkedWrite:
        """The writes that close a pending request inside the publish that carries it out
        (PolicyStore.publish's LINKED): its check raises ApprovalMissing / ApprovalClosed."""
        key = keys.policy_approval(approval_id)
        seen: dict[str, dict] = {}

        def check_pending(pipe) -> None:
            seen["record"] = self._checked(pipe, approval_id, check)

        def queue(pipe) -> list[dict]:
            self._queue_close(pipe, seen["record"], closing)
            return [audit_fields]

        return LinkedWrite(watch=(key,), check=check_pending, queue=queue)


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """RECORD without its bundle (lists and audit readers do not need megabytes)."""
    return {k: v for k, v in record.items() if k != "bundle"}
