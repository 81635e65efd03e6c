"""The activation reset: the repair for a phone bound by a forged or mistaken check-in (SPEC §13).

``bind: activation`` fixes a device's territory answer at the first check-in that decides it.
When that check-in was forged (the fleet's device token alone, made-up evidence) or mistaken,
support forgets the binding: the activation record and every ``bind: activation`` binding of
the device's state (with the grace clocks those rules started), so its next check-in binds
afresh. One audit entry, written in the same call as the change.
"""

from __future__ import annotations

from service.store.audit import AuditStore
from service.store.devices import ActivationReset, DeviceStore
from service.store.idempotency import Operation
from service.store.tokens import Principal

#: The audit action of a reset.
RESET_ACTION = "device.activation_reset"


def reset_activation(
    devices: DeviceStore,
    imei: str,
    principal: Principal,
    reason: str,
    ticket: str | None = None,
    operation: Operation | None = None,
) -> ActivationReset | None:
    """Forget IMEI's activation binding; what was forgotten (``forgotten``: ``activation``,
    ``bindings``), or None when there was nothing to forget (nothing written, no audit entry).
    OPERATION (the caller's Idempotency-Key) is applied at most once: sent again, the first
    result is returned (``replayed``); IdempotencyConflict when the key was used for another
    request, OutcomeUnknown when the answer was lost."""

    def audit_fields(forgotten: dict) -> dict:
        return AuditStore.entry_fields(
            principal.name,
            principal.role,
            RESET_ACTION,
            imei,
            {"reason": reason, "ticket": ticket, "forgotten": forgotten},
        )

    return devices.reset_activation(imei, audit_fields, operation=operation)
