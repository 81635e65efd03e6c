"""Support actions on devices: scoped unlocks, manual locks, removal, bulk unlock (SPEC §5)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from stdnum import luhn

from service.engine.model import Override
from service.engine.roles import liftable_kinds
from service.store.audit import AuditStore
from service.store.devices import DeviceStore
from service.store.tokens import Principal

#: Why an unlock was refused by its scope, as the caller is told.
SCOPE_MESSAGE = "only a compliance officer can lift a sanctioned_region lock"


class SanctionsScopeError(Exception):
    """The caller's role cannot lift the only lock(s) on the device."""

    def __init__(self, rules: list[str]):
        super().__init__(SCOPE_MESSAGE)
        self.rules = rules


@dataclass(frozen=True)
class UnlockOutcome:
    """What an unlock did: the stored override and the locks it cannot lift."""

    override: Override
    still_locked_by: list[dict] = field(default_factory=list)


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
    """Applies overrides with their audit entries; shared by the API and the CLI."""

    def __init__(self, devices: DeviceStore, audit: AuditStore):
        self.devices = devices
        self.audit = audit

    def unlock(
        self,
        imei: str,
        principal: Principal,
        reason: str,
        ticket: str | None = None,
        expires_in_s: int | None = None,
        now: float | None = None,
        action: str = "device.unlock",
    ) -> UnlockOutcome:
        """Unlock IMEI within what PRINCIPAL's role may lift; raises SanctionsScopeError when the
        device's only policy locks are sanctions locks the role cannot lift."""
        now = time.time() if now is None else now
        lifts = liftable_kinds(principal.role)
        blocking, can_lift_some = self._scope(imei, lifts)
        if blocking and not can_lift_some:
            raise SanctionsScopeError([r["rule"] for r in blocking])
        override = self._override("unlock", principal, reason, ticket, expires_in_s, now, lifts)
        self._store(imei, override, expires_in_s, principal, action)
        return UnlockOutcome(override=override, still_locked_by=blocking)

    def lock(
        self,
        imei: str,
        principal: Principal,
        reason: str,
        ticket: str | None = None,
        now: float | None = None,
        message: str | None = None,
    ) -> Override:
        """Manual lock, whatever the policy says, until removed; MESSAGE is the lock-screen
        text shown instead of the bundle's ``manual_lock`` one (SPEC §10)."""
        now = time.time() if now is None else now
        override = self._override("lock", principal, reason, ticket, None, now, frozenset())
        if message is not None:
            override = replace(override, message=message)
        self._store(imei, override, None, principal, "device.lock")
        return override

    def remove(self, imei: str, principal: Principal) -> bool:
        """Remove the device's override; False when there was none."""
        previous = self.devices.override(imei)
        if previous is None:
            return False
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
                }
            },
        )
        return self.devices.delete_override(imei, fields)

    def bulk_unlock(
        self,
        lines: Iterable[tuple[int, str]],
        principal: Principal,
        reason: str,
        ticket: str | None = None,
        expires_in_s: int | None = None,
    ) -> Iterator[dict]:
        """Unlock every valid IMEI of (line number, text) pairs, yielding one result per line
        that is not blank, a comment or a header: status applied / unchanged / invalid /
        refused. Re-running the same file changes nothing more (status unchanged)."""
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
            if imei in seen:
                yield {"line": line_no, "imei": imei, "status": "unchanged", "error": "duplicate"}
                continue
            seen.add(imei)
            current = self.devices.override(imei)
            if (
                current is not None
                and current.kind == "unlock"
                and current.reason == reason
                and current.ticket == ticket
                and current.lifts == frozenset(liftable_kinds(principal.role))
            ):
                yield {"line": line_no, "imei": imei, "status": "unchanged"}
                continue
            try:
                self.unlock(
                    imei, principal, reason, ticket, expires_in_s, action="device.bulk_unlock"
                )
            except SanctionsScopeError:
                yield {"line": line_no, "imei": imei, "status": "refused", "error": SCOPE_MESSAGE}
                continue
            yield {"line": line_no, "imei": imei, "status": "applied"}

    def _scope(self, imei: str, lifts: frozenset[str]) -> tuple[list[dict], bool]:
        """The device's policy locks this role cannot lift, and whether it can lift any."""
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

    def _store(self, imei, override, expires_in_s, principal, action) -> None:
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
            },
        )
        ttl = math.ceil(expires_in_s) if expires_in_s else None
        self.devices.set_override(imei, override, ttl, fields)
