"""Offline unlock codes issued by support (SPEC §11).

One call computes the code a locked phone with no data connection accepts and records the
matching unlock override (same scope, expiring after the code's validity; never for 0) with its
audit entry ``device.unlock_code``, in the one atomic write of :class:`OverrideService`. The
code itself is never stored (nor in the audit trail, nor in the idempotency record): a call
replayed with the same Idempotency-Key computes it again from the same challenge.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.crypto.device_keys import device_key, unlock_code
from service.devices.overrides import OverrideService, UnlockOutcome
from service.engine.model import DAY_S, SANCTIONED_REGION
from service.engine.roles import allowed
from service.store.devices import Operation
from service.store.tokens import Principal

#: The validity when the caller gives none (docs/decisions.md, "Unlock codes").
DEFAULT_VALID_DAYS = 7
ACTION = "device.unlock_code"


def scope_of_role(role: str) -> str:
    """The scope of a code ROLE issues: ``all`` for whoever may lift sanctions locks, as
    unlocks are scoped (SPEC §5), else ``gray``."""
    return "all" if allowed(role, "sanctions:lift") else "gray"


@dataclass(frozen=True)
class IssuedCode:
    """An issued code, its grant and the unlock override recorded with it."""

    code: str
    scope: str
    valid_days: int
    unlock: UnlockOutcome


def issue_unlock_code(
    overrides: OverrideService,
    master_key: bytes,
    imei: str,
    principal: Principal,
    challenge: str,
    reason: str,
    ticket: str | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
    operation: Operation | None = None,
) -> IssuedCode:
    """Issue the code for CHALLENGE on the device whose primary IMEI is IMEI, and record the
    matching override. Raises SanctionsScopeError (the device's only locks are sanctions locks
    the role cannot lift), IdempotencyConflict and OutcomeUnknown as an unlock does."""
    outcome = overrides.unlock(
        imei,
        principal,
        reason,
        ticket,
        valid_days * DAY_S if valid_days else None,
        action=ACTION,
        operation=operation,
        detail={
            "scope": scope_of_role(principal.role),
            "valid_days": valid_days,
            "challenge": challenge,
        },
    )
    # A replay answers with the grant first recorded (the override's scope), not the role now.
    scope = "all" if SANCTIONED_REGION in outcome.override.lifts else "gray"
    code = unlock_code(device_key(master_key, imei), challenge, scope, valid_days)
    return IssuedCode(code=code, scope=scope, valid_days=valid_days, unlock=outcome)
