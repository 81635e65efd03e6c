"""Support agents: device records, scoped unlocks, manual locks, bulk unlock, audit (SPEC §5)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis as redis_lib
from click.testing import CliRunner

from service.cli import main
from service.devices.overrides import OverrideService
from service.store import keys
from service.store.audit import AuditStore
from service.store.devices import DeviceStore
from service.store.server import EmbeddedRedis
from service.store.tokens import Principal
from tests.conftest import audit_entries, bearer
from tests.imeis import HK, UNKNOWN, UNKNOWN2, US

CUBA_NETWORK = {"sim": {"network": "36801"}}
US_NETWORK = {"sim": {"network": "310260"}}
HK_NETWORK = {"sim": {"network": "45400"}}


@pytest.fixture
def as_role(client, tokens):
    def call(role, method, path, body=None):
        return client.open(path, method=method, json=body, headers=bearer(tokens[role]))

    return call


def audit_actions(redis):
    return [(f["action"], f["imei"], f["actor"]) for f in audit_entries(redis)]


def test_unknown_device_is_404_and_bad_imei_is_422(as_role):
    assert as_role("agent", "GET", f"/v1/devices/{UNKNOWN}").status_code == 404
    response = as_role("agent", "GET", "/v1/devices/123")
    assert response.status_code == 422
    assert response.get_json()["error"]["fields"] == {"imei": ["must be 15 digits"]}
    luhn = as_role("agent", "GET", f"/v1/devices/{UNKNOWN[:-1]}{(int(UNKNOWN[-1]) + 1) % 10}")
    assert luhn.get_json()["error"]["fields"] == {"imei": ["has an invalid Luhn check digit"]}


def test_record_explains_the_verdict(checkin, as_role):
    checkin(HK, **US_NETWORK)  # a Hong Kong phone activated in the US: gray import
    checkin(HK, **HK_NETWORK)  # still locked back home
    record = as_role("agent", "GET", f"/v1/devices/{HK}").get_json()
    assert record["imei"] == HK and record["tac"] == HK[:8]
    assert record["verdict"] == "lock"
    assert record["distributor"]["id"] == "hk-global"
    assert set(record["distributor"]["territories"]) == {"HK", "MO"}
    assert record["activation"]["in_territory"] is False
    assert record["activation"]["places"] == {"network": "US"}
    assert record["last_checkin"]["places"] == {"network": "HK"}
    [reason] = record["reasons"]
    assert reason["code"] == "outside_territory" and reason["rule"] == "gray-market"
    # newest first
    assert [d["places"] for d in record["decisions"]] == [{"network": "HK"}, {"network": "US"}]
    assert record["override"] is None


def test_agent_unlock_lifts_gray_market_lock(checkin, as_role, redis):
    assert checkin(HK, **US_NETWORK)["verdict"] == "lock"
    response = as_role(
        "agent",
        "POST",
        f"/v1/devices/{HK}/unlock",
        {"reason": "proof of purchase in HK", "ticket": "SUP-1"},
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["still_locked"] is False
    assert body["override"]["lifts"] == ["distributor_territory"]
    after = checkin(HK, **US_NETWORK)
    assert after["verdict"] == "allow"
    assert [r["code"] for r in after["reasons"]] == ["override_unlock"]
    assert after["override"] == {
        "kind": "unlock",
        "lifts": ["distributor_territory"],
        "expires_at": None,
    }


def test_support_notes_never_reach_the_device(client, tokens, as_role):
    """Issue 12.12: the signed verdict carried the override's reason, ticket and agent name,
    readable by anyone holding the fleet's device token. Firmware gets kind, scope, expiry."""
    secret_reason = "customer Jane Roe, passport 12345, called from Havana"
    as_role(
        "agent",
        "POST",
        f"/v1/devices/{HK}/unlock",
        {"reason": secret_reason, "ticket": "SUP-77", "expires_in_s": 3600},
    )
    as_role(
        "agent", "POST", f"/v1/devices/{US}/lock", {"reason": secret_reason, "ticket": "SUP-78"}
    )
    for imei, kind in ((HK, "unlock"), (US, "lock")):
        response = client.post(
            "/v1/checkin", json={"imei": imei, **US_NETWORK}, headers=bearer(tokens["device"])
        )
        raw = response.get_data(as_text=True)
        for leaked in ("Jane Roe", "SUP-7", "agent", "actor", "ticket", "created_at"):
            assert leaked not in raw, (imei, leaked)
        override = response.get_json()["override"]
        assert set(override) == {"kind", "lifts", "expires_at"} and override["kind"] == kind
    # Support still sees everything.
    record = as_role("agent", "GET", f"/v1/devices/{HK}").get_json()
    assert record["override"]["reason"] == secret_reason
    assert record["override"]["ticket"] == "SUP-77"


def test_agent_cannot_lift_sanctions_only_lock(checkin, as_role, redis):
    assert checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "lock"
    response = as_role("agent", "POST", f"/v1/devices/{UNKNOWN}/unlock", {"reason": "please"})
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "sanctions_scope" and error["rules"] == ["sanctions"]
    assert error["message"] == "only a compliance officer can lift a sanctioned_region lock"
    # nothing recorded for a refused request
    assert redis.get(keys.device_override(UNKNOWN)) is None
    assert audit_actions(redis) == []
    assert checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "lock"


def test_agent_unlock_leaves_sanctions_lock_and_says_so(checkin, as_role):
    # A Hong Kong phone activated in Cuba: gray import *and* sanctioned region.
    first = checkin(HK, **CUBA_NETWORK)
    assert {r["code"] for r in first["reasons"]} == {"sanctioned_region", "outside_territory"}
    response = as_role("agent", "POST", f"/v1/devices/{HK}/unlock", {"reason": "r"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["still_locked"] is True
    assert [r["rule"] for r in body["still_locked_by"]] == ["sanctions"]
    after = checkin(HK, **CUBA_NETWORK)
    assert after["verdict"] == "lock"
    assert [r["code"] for r in after["reasons"]] == ["sanctioned_region", "override_unlock"]


def test_compliance_unlock_lifts_sanctions(checkin, as_role):
    checkin(UNKNOWN, **CUBA_NETWORK)
    response = as_role(
        "compliance",
        "POST",
        f"/v1/devices/{UNKNOWN}/unlock",
        {"reason": "investigation closed", "ticket": "CMP-9"},
    )
    assert response.status_code == 201
    assert set(response.get_json()["override"]["lifts"]) == {
        "sanctioned_region",
        "distributor_territory",
    }
    assert checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "allow"


def test_time_boxed_unlock_lapses_by_itself(checkin, as_role, redis):
    checkin(HK, **US_NETWORK)
    response = as_role(
        "agent", "POST", f"/v1/devices/{HK}/unlock", {"reason": "travel", "expires_in_s": 1}
    )
    assert response.status_code == 201
    assert response.get_json()["override"]["expires_at"] is not None
    assert checkin(HK, **US_NETWORK)["verdict"] == "allow"
    deadline = time.time() + 5
    while redis.exists(keys.device_override(HK)) and time.time() < deadline:
        time.sleep(0.1)
    assert checkin(HK, **US_NETWORK)["verdict"] == "lock"


def test_manual_lock_and_removal(checkin, as_role, redis):
    assert checkin(US, **US_NETWORK)["verdict"] == "allow"
    response = as_role("agent", "POST", f"/v1/devices/{US}/lock", {"reason": "reported stolen"})
    assert response.status_code == 201 and response.get_json()["kind"] == "lock"
    locked = checkin(US, **US_NETWORK)
    assert locked["verdict"] == "lock" and locked["reasons"][-1]["code"] == "manual_lock"
    assert as_role("agent", "DELETE", f"/v1/devices/{US}/override").status_code == 204
    assert checkin(US, **US_NETWORK)["verdict"] == "allow"
    assert as_role("agent", "DELETE", f"/v1/devices/{US}/override").status_code == 404
    assert [a for a, _, _ in audit_actions(redis)] == ["device.lock", "device.override_removed"]


def test_override_before_first_checkin(checkin, as_role):
    response = as_role("compliance", "POST", f"/v1/devices/{UNKNOWN2}/lock", {"reason": "fraud"})
    assert response.status_code == 201
    record = as_role("agent", "GET", f"/v1/devices/{UNKNOWN2}")
    assert record.status_code == 200
    assert record.get_json()["override"]["kind"] == "lock"
    assert record.get_json()["verdict"] is None
    assert checkin(UNKNOWN2)["verdict"] == "lock"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "r", "expires_in_s": 0}, "expires_in_s"),
        ({"reason": "r", "expires_in_s": "soon"}, "expires_in_s"),
        ({"reason": "r", "ticket": 12}, "ticket"),
    ],
)
def test_unlock_validation(as_role, redis, body, field):
    response = as_role("agent", "POST", f"/v1/devices/{HK}/unlock", body)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]
    assert redis.get(keys.device_override(HK)) is None
    assert audit_actions(redis) == []


def test_every_state_change_leaves_exactly_one_audit_entry(checkin, as_role, redis):
    checkin(HK, **US_NETWORK)
    calls = [
        ("POST", f"/v1/devices/{HK}/unlock", {"reason": "a"}, "device.unlock"),
        ("POST", f"/v1/devices/{HK}/lock", {"reason": "b"}, "device.lock"),
        ("DELETE", f"/v1/devices/{HK}/override", None, "device.override_removed"),
    ]
    for method, path, body, action in calls:
        before = len(audit_entries(redis))
        assert as_role("agent", method, path, body).status_code in (201, 204)
        entries = audit_entries(redis)
        assert len(entries) == before + 1
        fields = entries[-1]
        assert (fields["action"], fields["imei"], fields["actor"], fields["role"]) == (
            action,
            HK,
            "test-agent",
            "agent",
        )
    # check-ins are not audit events
    checkin(HK, **US_NETWORK)
    assert len(audit_entries(redis)) == len(calls)


def test_audit_api_filters_and_pages(as_role):
    for imei in (HK, US, UNKNOWN):
        as_role("agent", "POST", f"/v1/devices/{imei}/lock", {"reason": "x"})
    as_role("compliance", "POST", f"/v1/devices/{HK}/unlock", {"reason": "y"})
    page = as_role("auditor", "GET", "/v1/audit?limit=2").get_json()
    assert [e["action"] for e in page["entries"]] == ["device.unlock", "device.lock"]
    assert page["entries"][0]["actor"] == "test-compliance"
    rest = as_role("auditor", "GET", f"/v1/audit?limit=10&before={page['next']}").get_json()
    assert [e["imei"] for e in rest["entries"]] == [US, HK]
    assert rest["next"] is None
    by_imei = as_role("auditor", "GET", f"/v1/audit?imei={HK}").get_json()["entries"]
    assert [e["action"] for e in by_imei] == ["device.unlock", "device.lock"]
    by_actor = as_role("auditor", "GET", "/v1/audit?actor=test-agent&action=device.lock")
    assert len(by_actor.get_json()["entries"]) == 3
    first = by_imei[0]
    assert set(first) == {"id", "at", "actor", "role", "action", "imei", "detail"}
    assert first["detail"]["reason"] == "y"
    assert as_role("auditor", "GET", "/v1/audit?limit=0").status_code == 422


def test_audit_cannot_be_edited_through_the_service(app, as_role):
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert "/v1/audit" in rules
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert as_role("admin", method, "/v1/audit", {}).status_code == 405


def test_bulk_unlock_api_reports_bad_lines(checkin, as_role, redis):
    checkin(HK, **US_NETWORK)
    checkin(UNKNOWN, **CUBA_NETWORK)
    response = as_role(
        "agent",
        "POST",
        "/v1/devices/unlock",
        {
            "imeis": [HK, "12345", HK[:-1] + str((int(HK[-1]) + 1) % 10), UNKNOWN, US],
            "reason": "investigation 7",
            "ticket": "INV-7",
        },
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["applied"], body["invalid"], body["refused"]) == (2, 2, 1)
    by_line = {r["line"]: r for r in body["results"]}
    assert by_line[2]["error"] == "must be 15 digits"
    assert "Luhn" in by_line[3]["error"]
    assert by_line[4]["status"] == "refused"
    assert sorted(i for a, i, _ in audit_actions(redis)) == sorted([HK, US])
    # re-run: nothing new
    again = as_role(
        "agent",
        "POST",
        "/v1/devices/unlock",
        {"imeis": [HK, US], "reason": "investigation 7", "ticket": "INV-7"},
    ).get_json()
    assert (again["applied"], again["unchanged"]) == (0, 2)
    assert len(audit_actions(redis)) == 2


def test_bulk_unlock_cli(redis, redis_url, monkeypatch, tmp_path):
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    devices = [f"{HK}", "not-an-imei", "", "# comment", US, UNKNOWN]
    path = tmp_path / "imeis.csv"
    path.write_text("imei\n" + "\n".join(devices) + "\n")
    args = [
        "devices",
        "unlock",
        "--file",
        str(path),
        "--reason",
        "after investigation",
        "--ticket",
        "INV-1",
        "--actor",
        "ops",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1  # an invalid line was reported
    assert "applied 3, unchanged 0, refused 0, invalid 1" in result.stdout
    assert "line 3: not-an-imei: invalid" in result.stderr
    assert "unlocking" in result.stderr  # the progress bar
    actions = audit_actions(redis)
    assert sorted(i for _, i, _ in actions) == sorted([HK, US, UNKNOWN])
    assert {a for a, _, _ in actions} == {"device.bulk_unlock"}
    assert {actor for _, _, actor in actions} == {"ops"}
    rerun = CliRunner().invoke(main, args)
    assert "applied 0, unchanged 3" in rerun.stdout
    assert len(audit_actions(redis)) == 3


def test_overrides_and_audit_survive_a_redis_restart(tmp_path: Path):
    data = tmp_path / "redis"
    principal = Principal("agent-1", "agent")
    with EmbeddedRedis(data) as server:
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        service = OverrideService(DeviceStore(client), AuditStore(client))
        service.lock(US, principal, "stolen")
        service.unlock(HK, principal, "ok", "T-1")
        client.close()
    with EmbeddedRedis(data) as server:
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        devices = DeviceStore(client)
        assert devices.override(US).kind == "lock"
        assert devices.override(HK).ticket == "T-1"
        assert [f["action"] for f in audit_entries(client)] == [
            "device.lock",
            "device.unlock",
        ]
        client.close()
