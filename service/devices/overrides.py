"""Support actions on devices: scoped unlocks, manual locks, removal, bulk unlock (SPEC §5)."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import redis as redis_lib
from stdnum import luhn

from service.devices.identity import AmbiguousImei, resolve_device
from service.devices.stats import override_counts
from service.engine.model import Override, lifted_kinds
from service.engine.roles import liftable_kinds
from service.store.audit import AuditStore
from service.store.devices import ANY, DeviceStore, override_etag
from service.store.idempotency import (  # re-exported: callers import them from here
    ANONYMOUS_TTL_S,
    IDEMPOTENCY_TTL_S,
    MAX_IDEMPOTENCY_KEY,
    OUTCOME_UNKNOWN_MESSAGE,
    IdempotencyConflict,
    Operation,
    OutcomeUnknown,
    anonymous_operation,
    check_fingerprint,
    named_operation,
    request_fingerprint,
)
from service.store.identities import IdentityStore
from service.store.records import decode_override, encode_override
from service.store.tokens import Principal

__all__ = [
    "ANONYMOUS_TTL_S",
    "IDEMPOTENCY_TTL_S",
    "MAX_IDEMPOTENCY_KEY",
    "OUTCOME_UNKNOWN_MESSAGE",
    "IdempotencyConflict",
    "InvalidImei",
    "LockOutcome",
    "Operation",
    "OutcomeUnknown",
    "OverrideService",
    "RemoveOutcome",
    "SCOPE_MESSAGE",
    "SanctionsScopeError",
    "UnlockOutcome",
    "anonymous_operation",
    "named_operation",
    "normalise_imei",
    "request_fingerprint",
]

#: Why an unlock was refused by its scope, as the caller is told.
SCOPE_MESSAGE = "only a compliance officer can lift a sanctioned_region lock"


class SanctionsScopeError(Exception):
    """The caller's role cannot lift the only lock(s) on the device."""

    def __init__(self, rules: list[str]):
        super().__init__(SCOPE_MESSAGE)
        self.rules = rules


@dataclass(frozen=True)
class UnlockOutcome:
    """What an unlock did: the stored override (and its ETag) and the locks it cannot lift;
    REPLAYED when the call had been applied before (same Idempotency-Key)."""

    override: Override
    still_locked_by: list[dict] = field(default_factory=list)
    etag: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class LockOutcome:
    """What a lock did: the stored override and its ETag."""

    override: Override
    etag: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class RemoveOutcome:
    """What a removal did: STATUS is ``removed`` (REMOVED: the override it removed), ``none``
    (the device had none) or ``mismatch`` (If-Match named another override)."""

    status: str
    removed: Override | None = None
    replayed: bool = False


#: How often an override change is computed again when check-ins keep landing under it.
_STALE_ATTEMPTS = 5


class OverviewConflict(RuntimeError):
    """The device's record kept changing under an override change (check-ins racing it)."""


class _Changed(Exception):
    """The override changed since it was read; CURRENT is what the device holds now."""

    def __init__(self, current: str | None):
        super().__init__("override changed")
        self.current = current


def _device_operation(operation: Operation, imei: str) -> Operation:
    """The share of a many-device operation that touches IMEI."""
    digest = hashlib.sha256(f"{operation.digest}:{imei}".encode()).hexdigest()
    return Operation(digest=digest, fingerprint=operation.fingerprint, ttl_s=operation.ttl_s)


class InvalidImei(ValueError):
    """Not an IMEI; ``problem`` says why, in words written for whoever typed it."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def normalise_imei(raw: str) -> str:
    """IMEI digits with spaces and dashes stripped; InvalidImei naming what is wrong."""
    digits = raw.strip().replace(" ", "").replace("-", "")
    if not digits.isascii() or not digits.isdigit() or len(digits) != 15:
        raise InvalidImei("must be 15 digits")
    if not luhn.is_valid(digits):
        raise InvalidImei("has an invalid Luhn check digit")
    return digits


class OverrideService:
    """Applies overrides with their audit entries; shared by the API, the console and the CLI.

    Every change is one check-and-set script call on the device's keys (the override, the
    operation's idempotency record and, outside a Cluster, the audit entry): a removal removes
    exactly the override its audit entry describes, and no change is applied twice.
    """

    def __init__(
        self, devices: DeviceStore, audit: AuditStore, identities: IdentityStore | None = None
    ):
        self.devices = devices
        self.audit = audit
        # Resolves another IMEI of a device to its primary (SPEC §9) for bulk unlocks; the
        # single-device calls resolve before they get here.
        self.identities = identities

    def unlock(
        self,
        imei: str,
        principal: Principal,
        reason: str,
        ticket: str | None = None,
        expires_in_s: int | None = None,
        now: float | None = None,
        action: str = "device.unlock",
        operation: Operation | None = None,
        detail: dict | None = None,
    ) -> UnlockOutcome:
        """Unlock IMEI within what PRINCIPAL's role may lift; raises SanctionsScopeError when the
        device's only policy locks are sanctions locks the role cannot lift. DETAIL joins the
        audit entry's detail (an unlock code's scope, validity and challenge)."""
        operation = operation or anonymous_operation()
        prior = self._prior(imei, operation)
        if prior is not None:
            return self._unlock_replay(prior)
        return self._unlock(
            imei, principal, reason, ticket, expires_in_s, now, action, operation, detail=detail
        )

    def lock(
        self,
        imei: str,
        principal: Principal,
        reason: str,
        ticket: str | None = None,
        now: float | None = None,
        operation: Operation | None = None,
        message: str | None = None,
    ) -> LockOutcome:
        """Manual lock, whatever the policy says, until removed; MESSAGE is the lock-screen
        text shown instead of the bundle's ``manual_lock`` one (SPEC §10)."""
        operation = operation or anonymous_operation()
        prior = self._prior(imei, operation)
        if prior is None:
            now = time.time() if now is None else now
            override = self._override("lock", principal, reason, ticket, None, now, frozenset())
            if message is not None:
                override = replace(override, message=message)
            raw = self._store(imei, override, None, principal, "device.lock", operation, ANY, {})
            if isinstance(raw, dict):
                prior = raw
            else:
                return LockOutcome(override=override, etag=override_etag(raw))
        stored = prior["override"]
        return LockOutcome(decode_override(stored), etag=override_etag(stored), replayed=True)

    def remove(
        self,
        imei: str,
        principal: Principal,
        if_match: str | None = None,
        operation: Operation | None = None,
    ) -> RemoveOutcome:
        """Remove the device's override, atomically: the audit entry names exactly the override
        removed. IF_MATCH (an ETag, or ``*``) removes it only while it is that override."""
        operation = operation or anonymous_operation()
        prior = self._prior(imei, operation)
        if prior is None:
            current = self.devices.override_raw(imei)
            while True:
                if current is None:
                    return RemoveOutcome("mismatch" if if_match else "none")
                if if_match not in (None, "*") and override_etag(current) != if_match:
                    return RemoveOutcome("mismatch")
                previous = decode_override(current)
                fields = self.audit.entry_fields(
                    principal.name,
                    principal.role,
                    "device.override_removed",
                    imei,
                    {
                        "removed": {
                            "kind": previous.kind,
                            "reason": previous.reason,
                            "ticket": previous.ticket,
                            "actor": previous.actor,
                            "etag": override_etag(current),
                        }
                    },
                )
                change = self._apply(
                    imei,
                    None,
                    None,
                    current,
                    operation,
                    {"status": 204, "removed": current},
                    fields,
                )
                if change.outcome == "done":
                    return RemoveOutcome("removed", removed=previous)
                if change.outcome == "replay":
                    prior = change.record
                    break
                current = change.current  # changed meanwhile: decide again on what is there
        self._check_fingerprint(prior, operation)
        return RemoveOutcome("removed", decode_override(prior["removed"]), replayed=True)

    def bulk_unlock(
        self,
        lines: Iterable[tuple[int, str]],
        principal: Principal,
        reason: str,
        ticket: str | None = None,
        expires_in_s: int | None = None,
        operation: Operation | None = None,
    ) -> Iterator[dict]:
        """Unlock every valid IMEI of (line number, text) pairs, yielding one result per line
        that is not blank, a comment or a header: status applied / unchanged / invalid /
        refused. Re-running the same file changes nothing more (status unchanged); re-running
        the same call with the same OPERATION (Idempotency-Key) replays each device's result
        (status applied again, nothing written twice). Each device's "unchanged" decision and
        its write are one check-and-set, so overlapping bulk unlocks write one audit entry per
        device actually changed."""
        operation = operation or anonymous_operation()
        lifts = frozenset(liftable_kinds(principal.role))
        seen: set[str] = set()
        for line_no, text in lines:
            cell = text.split(",")[0].strip().strip('"')
            if not cell or cell.startswith("#") or (line_no == 1 and cell.lower() == "imei"):
                continue
            try:
                imei = normalise_imei(cell)
            except InvalidImei as exc:
                yield {
                    "line": line_no,
                    "value": cell[:40],
                    "status": "invalid",
                    "error": exc.problem,
                }
                continue
            try:
                device = resolve_device(self.identities, imei)
            except AmbiguousImei as exc:
                yield {
                    "line": line_no,
                    "imei": imei,
                    "status": "refused",
                    "error": "ambiguous_imei: another IMEI of several devices "
                    f"({', '.join(exc.primaries)}): unlock each by its own IMEI",
                }
                continue
            # An alias acts on its device: results name the primary as "device" when it differs.
            named = {"imei": imei} if device == imei else {"imei": imei, "device": device}
            if device in seen:
                yield {"line": line_no, **named, "status": "unchanged", "error": "duplicate"}
                continue
            seen.add(device)
            status = self._bulk_one(
                device, principal, reason, ticket, expires_in_s, lifts, operation
            )
            if status == "refused":
                yield {"line": line_no, **named, "status": "refused", "error": SCOPE_MESSAGE}
            else:
                yield {"line": line_no, **named, "status": status}

    def _bulk_one(self, imei, principal, reason, ticket, expires_in_s, lifts, operation) -> str:
        device_operation = _device_operation(operation, imei)
        if operation.fingerprint and self._prior(imei, device_operation) is not None:
            return "applied"
        current = self.devices.override_raw(imei)
        while True:
            existing = decode_override(current)
            if (
                existing is not None
                and existing.kind == "unlock"
                and existing.reason == reason
                and existing.ticket == ticket
                and existing.lifts == lifts
            ):
                return "unchanged"
            try:
                outcome = self._unlock(
                    imei,
                    principal,
                    reason,
                    ticket,
                    expires_in_s,
                    None,
                    "device.bulk_unlock",
                    device_operation,
                    expected=current,
                )
            except SanctionsScopeError:
                return "refused"
            except _Changed as changed:
                current = changed.current  # another writer got there first: decide again
                continue
            del outcome
            return "applied"

    def _unlock(
        self,
        imei,
        principal,
        reason,
        ticket,
        expires_in_s,
        now,
        action,
        operation,
        expected=ANY,
        detail=None,
    ) -> UnlockOutcome:
        now = time.time() if now is None else now
        lifts = liftable_kinds(principal.role)
        blocking, can_lift_some = self._scope(imei, lifts)
        if blocking and not can_lift_some:
            raise SanctionsScopeError([r["rule"] for r in blocking])
        override = self._override("unlock", principal, reason, ticket, expires_in_s, now, lifts)
        raw = self._store(
            imei,
            override,
            expires_in_s,
            principal,
            action,
            operation,
            expected,
            {"still_locked_by": blocking},
            detail,
        )
        if isinstance(raw, dict):
            return self._unlock_replay(raw)
        return UnlockOutcome(override=override, still_locked_by=blocking, etag=override_etag(raw))

    @staticmethod
    def _unlock_replay(record: dict) -> UnlockOutcome:
        stored = record["override"]
        return UnlockOutcome(
            override=decode_override(stored),
            still_locked_by=record.get("still_locked_by") or [],
            etag=override_etag(stored),
            replayed=True,
        )

    def _prior(self, imei: str, operation: Operation) -> dict | None:
        """The record of OPERATION if it was applied before (checked first, so a retry is
        answered as the first call was even if the device changed since)."""
        if not operation.fingerprint:
            return None
        prior = self.devices.operation_record(imei, operation.digest)
        if prior is not None:
            self._check_fingerprint(prior, operation)
        return prior

    @staticmethod
    def _check_fingerprint(record: dict, operation: Operation) -> None:
        check_fingerprint(record, operation)

    def _scope(self, imei: str, lifts: frozenset[str]) -> tuple[list[dict], bool]:
        """The device's policy locks this role cannot lift, and whether it can lift any."""
        lifts = lifted_kinds(lifts)  # carrier locks go with territory ones (SPEC §11 gray)
        locks = [
            r for r in self.devices.policy_reasons(imei) if r.get("action") in ("lock", "warn")
        ]
        blocking = [r for r in locks if r.get("kind") not in lifts]
        return blocking, any(r.get("kind") in lifts for r in locks)

    def _override(self, kind, principal, reason, ticket, expires_in_s, now, lifts) -> Override:
        return Override(
            kind=kind,
            lifts=frozenset(lifts),
            reason=reason,
            ticket=ticket,
            actor=principal.name,
            role=principal.role,
            created_at=now,
            expires_at=now + expires_in_s if expires_in_s else None,
        )

    def _store(
        self,
        imei,
        override,
        expires_in_s,
        principal,
        action,
        operation,
        expected,
        extra,
        detail=None,
    ) -> str | dict:
        """Write OVERRIDE with its audit entry: its stored form, or the record of the same
        operation applied before (a dict). Raises _Changed when EXPECTED no longer holds."""
        fields = self.audit.entry_fields(
            principal.name,
            principal.role,
            action,
            imei,
            {
                "reason": override.reason,
                "ticket": override.ticket,
                "lifts": sorted(override.lifts),
                "expires_at": override.expires_at,
                **({"message": override.message} if override.message is not None else {}),
                **(detail or {}),
            },
        )
        ttl = math.ceil(expires_in_s) if expires_in_s else None
        raw = encode_override(override).decode()
        change = self._apply(
            imei,
            override,
            ttl,
            expected,
            operation,
            {"status": 201, "override": raw, **extra},
            fields,
        )
        if change.outcome == "replay":
            self._check_fingerprint(change.record, operation)
            return change.record
        if change.outcome == "changed":
            raise _Changed(change.current)
        return raw

    def _apply(self, imei, override, ttl, expected, operation, result, fields):
        try:
            for _ in range(_STALE_ATTEMPTS):
                now = time.time()
                counts = None
                if self.devices.overview:
                    # SPEC §14: the change's counters and the device's new locked-index entry
                    # go in the same script; 'stale' when a check-in changed what the entry is
                    # computed from meanwhile (compute it again).
                    counts = override_counts(
                        self.devices.index_basis(imei),
                        override,
                        fields["action"],
                        fields["role"],
                        now,
                    )
                change = self.devices.change_override(
                    imei,
                    new=override,
                    ttl_s=ttl,
                    expected=expected,
                    operation=operation,
                    result=result,
                    audit_fields=fields,
                    counts=counts,
                    now=now,
                )
                if change.outcome != "stale":
                    return change
            raise OverviewConflict(imei)
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            # Sent (or perhaps sent): whether it was applied cannot be known from here.
            raise OutcomeUnknown(OUTCOME_UNKNOWN_MESSAGE) from exc
