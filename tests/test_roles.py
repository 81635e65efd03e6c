"""The permission table of SPEC §3, as a table of (role, endpoint, status)."""

from __future__ import annotations

import pytest

from service.engine.roles import PERMISSIONS
from service.store.tokens import ROLES
from tests.conftest import bearer

IMEI = "353879234252633"

# endpoint -> (method, path, body, permission, status when allowed)
ENDPOINTS = {
    "checkin": ("POST", "/v1/checkin", {"imei": IMEI}, "checkin", 200),
    "device": ("GET", f"/v1/devices/{IMEI}", None, "devices:read", 200),
    "unlock": ("POST", f"/v1/devices/{IMEI}/unlock", {"reason": "r"}, "devices:write", 201),
    "lock": ("POST", f"/v1/devices/{IMEI}/lock", {"reason": "r"}, "devices:write", 201),
    "bulk": ("POST", "/v1/devices/unlock", {"imeis": [IMEI], "reason": "r"}, "devices:write", 200),
    "audit": ("GET", "/v1/audit", None, "audit:read", 200),
    "unlock-code": (
        "POST",
        f"/v1/devices/{IMEI}/unlock-code",
        {"challenge": "0123456789", "reason": "r"},
        "devices:unlock-code",
        201,
    ),
    "reset-activation": (
        "DELETE",
        f"/v1/devices/{IMEI}/activation",
        {"reason": "r"},
        "devices:reset-activation",
        204,
    ),
    # Fleet overview (SPEC §14).
    "stats": ("GET", "/v1/stats", None, "stats:read", 200),
    "locked-export": ("GET", "/v1/reports/locked-devices", None, "reports:export", 200),
    "audit-export": ("GET", "/v1/reports/audit", None, "reports:export", 200),
}

EXPECTED = {
    #            device agent compliance editor auditor admin
    "checkin": (True, False, False, False, False, True),
    "device": (False, True, True, False, True, True),
    "unlock": (False, True, True, False, False, True),
    "lock": (False, True, True, False, False, True),
    "bulk": (False, True, True, False, False, True),
    "audit": (False, False, True, False, True, True),
    "unlock-code": (False, True, True, False, False, True),
    "reset-activation": (False, True, True, False, False, True),
    "stats": (False, False, True, True, True, True),
    "locked-export": (False, False, True, False, True, True),
    "audit-export": (False, False, True, False, True, True),
}

TABLE = [
    (role, endpoint, allowed)
    for endpoint, row in EXPECTED.items()
    for role, allowed in zip(ROLES, row, strict=True)
]


def test_table_matches_the_permissions_in_code():
    for endpoint, row in EXPECTED.items():
        permission = ENDPOINTS[endpoint][3]
        assert tuple(role in PERMISSIONS[permission] for role in ROLES) == row, endpoint


@pytest.mark.parametrize(("role", "endpoint", "allowed"), TABLE)
def test_role_endpoint_status(app, client, tokens, role, endpoint, allowed):
    method, path, body, _, ok_status = ENDPOINTS[endpoint]
    if endpoint in ("device", "reset-activation"):
        # A device record exists once it has checked in.
        checkin = client.post("/v1/checkin", json={"imei": IMEI}, headers=bearer(tokens["device"]))
        assert checkin.status_code == 200, checkin.get_json()
    response = client.open(path, method=method, json=body, headers=bearer(tokens[role]))
    expected = ok_status if allowed else 403
    assert response.status_code == expected, response.get_json()
    if not allowed:
        assert response.get_json()["error"]["code"] == "forbidden"
