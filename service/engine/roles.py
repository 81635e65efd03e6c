"""The permission table of SPEC §3 and what an unlock by each role lifts: plain data, shared by
the HTTP layer (web/auth), the device services and the console."""

from __future__ import annotations

from service.engine.model import DISTRIBUTOR_TERRITORY, SANCTIONED_REGION

# permission -> roles that hold it (SPEC §3).
PERMISSIONS: dict[str, frozenset[str]] = {
    "checkin": frozenset({"device", "admin"}),
    "devices:read": frozenset({"agent", "compliance", "auditor", "admin"}),
    "devices:write": frozenset({"agent", "compliance", "admin"}),
    # Forget a device's activation binding (SPEC §13).
    "devices:reset-activation": frozenset({"agent", "compliance", "admin"}),
    # Issue an offline unlock code, scoped like unlocks (SPEC §11).
    "devices:unlock-code": frozenset({"agent", "compliance", "admin"}),
    "sanctions:lift": frozenset({"compliance", "admin"}),
    "policy:read": frozenset({"agent", "compliance", "editor", "auditor", "admin"}),
    "policy:write": frozenset({"editor", "admin"}),
    "audit:read": frozenset({"compliance", "auditor", "admin"}),
    # Four eyes on sanctions (SPEC §12.4): list requests; approve or reject one (never one's
    # own: checked by service/policy/approvals.py). Withdrawing one's own needs policy:write.
    "approvals:read": frozenset({"compliance", "editor", "auditor", "admin"}),
    "approvals:decide": frozenset({"compliance", "admin"}),
    # Fleet overview (SPEC §14): the stats and the console overview; the CSV exports.
    "stats:read": frozenset({"compliance", "editor", "auditor", "admin"}),
    "reports:export": frozenset({"compliance", "auditor", "admin"}),
}


def allowed(role: str, permission: str) -> bool:
    """True when ROLE holds PERMISSION."""
    return role in PERMISSIONS[permission]


def liftable_kinds(role: str) -> frozenset[str]:
    """Rule kinds an unlock by ROLE sets aside: sanctions only for compliance and admin."""
    if allowed(role, "sanctions:lift"):
        return frozenset({DISTRIBUTOR_TERRITORY, SANCTIONED_REGION})
    return frozenset({DISTRIBUTOR_TERRITORY})
