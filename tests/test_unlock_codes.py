"""Offline unlock codes (SPEC §11): the code, its reference verifier, and the API that issues
them with the matching override (docs/unlock-codes.md has the published vectors)."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime

import orjson
import pytest
from click.testing import CliRunner

from service.cli import main
from service.crypto.device_keys import device_key, unlock_code, verify_code
from service.store import keys
from tests.conftest import audit_entries, bearer
from tests.imeis import HK, UNKNOWN, UNKNOWN2

KEY = device_key(bytes(range(32)), "353879234252633")


def _by_hand(key: bytes, challenge: str, scope: str, days: int) -> str:
    """SPEC §11's words, written out again independently of the module."""
    digest = hmac.new(key, f"{challenge}:{scope}:{days}".encode(), hashlib.sha256).digest()
    return str(int.from_bytes(digest[:8], "big") % 10**12).zfill(12)


@pytest.mark.parametrize(
    ("challenge", "scope", "days"),
    [("0123456789", "gray", 7), ("0000000001", "all", 0), ("9999999999", "all", 90)],
)
def test_the_code_is_the_spec_formula_and_verifies(challenge, scope, days):
    code = unlock_code(KEY, challenge, scope, days)
    assert code == _by_hand(KEY, challenge, scope, days)
    assert len(code) == 12 and code.isdigit()
    assert verify_code(KEY, challenge, code) == (scope, days)


def test_a_code_is_bound_to_its_device_challenge_and_grant():
    code = unlock_code(KEY, "0123456789", "gray", 7)
    other_key = device_key(bytes(range(32)), "358754210000014")
    assert verify_code(other_key, "0123456789", code) is None
    assert verify_code(KEY, "0123456788", code) is None
    assert unlock_code(KEY, "0123456789", "all", 7) != code
    assert unlock_code(KEY, "0123456789", "gray", 8) != code
    # Off by one digit: refused.
    wrong = code[:-1] + str((int(code[-1]) + 1) % 10)
    assert verify_code(KEY, "0123456789", wrong) is None


@pytest.mark.parametrize(
    ("challenge", "code"),
    [
        ("012345678", "000000000000"),
        ("01234567890", "000000000000"),
        ("０１２３４５６７８９", "0"),
        ("0123456789", "12345678901"),
        ("0123456789", "1234567890123"),
        ("0123456789", "12345678901a"),
    ],
)
def test_verify_refuses_malformed_input_without_raising(challenge, code):
    assert verify_code(KEY, challenge, code) is None


@pytest.mark.parametrize(
    ("scope", "days"), [("none", 7), ("GRAY", 7), ("gray", -1), ("gray", 91), ("all", True)]
)
def test_unlock_code_refuses_what_is_not_a_grant(scope, days):
    with pytest.raises(ValueError):
        unlock_code(KEY, "0123456789", scope, days)


def _verify(*args):
    return CliRunner().invoke(main, ["unlock-codes", "verify", *args])


def test_the_verify_command_prints_the_grant():
    code = unlock_code(KEY, "0012345678", "all", 30)
    result = _verify("--device-key", KEY.hex(), "--challenge", "0012345678", "--code", code)
    assert result.exit_code == 0, result.output
    assert "scope: all" in result.output
    assert "valid_days: 30" in result.output
    assert "sanctioned_region" in result.output
    zero = unlock_code(KEY, "0012345678", "gray", 0)
    result = _verify("--device-key", KEY.hex().upper(), "--challenge", "0012345678", "--code", zero)
    assert result.exit_code == 0, result.output
    assert "scope: gray" in result.output and "valid_days: 0" in result.output
    assert "next successful check-in" in result.output


def test_the_verify_command_exits_1_for_a_wrong_code():
    code = unlock_code(KEY, "0012345678", "all", 30)
    for challenge, candidate in (
        ("0012345679", code),
        ("0012345678", "000000000000"),
        ("0012345678", "123"),
    ):
        result = _verify("--device-key", KEY.hex(), "--challenge", challenge, "--code", candidate)
        assert result.exit_code == 1, result.output
        assert "scope:" not in result.output


@pytest.mark.parametrize(
    ("key", "challenge"), [("abc", "0012345678"), ("zz" * 32, "0012345678"), (KEY.hex(), "12")]
)
def test_the_verify_command_names_a_bad_argument(key, challenge):
    result = _verify("--device-key", key, "--challenge", challenge, "--code", "000000000000")
    assert result.exit_code == 2
    assert "--device-key" in result.output or "--challenge" in result.output


# --- the API: POST /v1/devices/<imei>/unlock-code -------------------------------------------

CUBA_NETWORK = {"sim": {"network": "36801"}}
US_NETWORK = {"sim": {"network": "310260"}}
CHALLENGE = "0012345678"


@pytest.fixture
def master(tmp_path):
    from service.crypto.secrets import create_secret_file

    path = tmp_path / "handed-out" / "unlock-master-key"
    return path, create_secret_file(path)


@pytest.fixture
def api(make_app, master, tokens):
    client = make_app(unlock_master_key_file=master[0]).test_client()

    def call(role, method, path, body=None, headers=None):
        return client.open(
            path, method=method, json=body, headers={**bearer(tokens[role]), **(headers or {})}
        )

    def checkin(imei, **body):
        response = call("device", "POST", "/v1/checkin", {"imei": imei, **body})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    call.checkin = checkin
    return call


def _issue(api, role, imei, **body):
    return api(
        role,
        "POST",
        f"/v1/devices/{imei}/unlock-code",
        {"challenge": CHALLENGE, "reason": "customer on the phone", **body},
    )


def test_an_agent_gets_a_gray_code_and_the_next_checkin_agrees(api, master, redis):
    assert api.checkin(HK, **US_NETWORK)["verdict"] == "lock"
    response = _issue(api, "agent", HK, ticket="SUP-9", valid_days=30)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    key = device_key(master[1], HK)
    assert body["code"] == unlock_code(key, CHALLENGE, "gray", 30)
    assert verify_code(key, CHALLENGE, body["code"]) == ("gray", 30)
    assert (body["scope"], body["valid_days"], body["imei"]) == ("gray", 30, HK)
    assert body["override"]["kind"] == "unlock"
    assert body["override"]["lifts"] == ["distributor_territory"]
    created = time.time()
    expires = datetime.fromisoformat(body["override"]["expires_at"]).timestamp()
    assert abs(expires - (created + 30 * 86400)) < 60
    after = api.checkin(HK, **US_NETWORK)
    assert after["verdict"] == "allow"
    assert after["override"]["kind"] == "unlock"
    # One audit entry, with the grant and the challenge, never the code.
    [entry] = audit_entries(redis)
    assert (entry["action"], entry["imei"], entry["actor"]) == (
        "device.unlock_code",
        HK,
        "test-agent",
    )
    detail = orjson.loads(entry["detail"])
    assert detail["scope"] == "gray" and detail["valid_days"] == 30
    assert detail["challenge"] == CHALLENGE and detail["ticket"] == "SUP-9"
    assert body["code"] not in str(entry)
    # Nor anywhere else in Redis (the idempotency record included).
    for name in redis.scan_iter("*"):
        if redis.type(name) == "string":
            assert body["code"] not in (redis.get(name) or ""), name


@pytest.mark.parametrize("role", ["compliance", "admin"])
def test_compliance_and_admin_get_an_all_code_that_lifts_sanctions(api, master, role):
    assert api.checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "lock"
    response = _issue(api, role, UNKNOWN, valid_days=0)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["scope"] == "all" and body["valid_days"] == 0
    assert body["code"] == unlock_code(device_key(master[1], UNKNOWN), CHALLENGE, "all", 0)
    assert body["override"]["expires_at"] is None  # 0: the override never expires
    assert set(body["override"]["lifts"]) == {"distributor_territory", "sanctioned_region"}
    assert api.checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "allow"


def test_an_agent_is_refused_a_code_for_a_sanctions_only_lock(api, redis):
    assert api.checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "lock"
    response = _issue(api, "agent", UNKNOWN)
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "sanctions_scope" and error["rules"] == ["sanctions"]
    assert "code" not in response.get_json()
    assert redis.get(keys.device_override(UNKNOWN)) is None
    assert audit_entries(redis) == []
    assert api.checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "lock"


def test_an_agent_code_leaves_a_sanctions_lock_and_says_so(api):
    api.checkin(HK, **CUBA_NETWORK)  # gray import and sanctioned region
    body = _issue(api, "agent", HK).get_json()
    assert body["scope"] == "gray" and body["still_locked"] is True
    assert [r["rule"] for r in body["still_locked_by"]] == ["sanctions"]
    assert body["valid_days"] == 7  # the default
    assert api.checkin(HK, **CUBA_NETWORK)["verdict"] == "lock"


def test_an_alias_reaches_the_primary_imei_and_its_key(api, master):
    api.checkin(UNKNOWN2, imeis=[UNKNOWN], **US_NETWORK)
    body = _issue(api, "compliance", UNKNOWN).get_json()
    assert body["imei"] == UNKNOWN2
    assert body["code"] == unlock_code(device_key(master[1], UNKNOWN2), CHALLENGE, "all", 7)


def test_the_same_idempotency_key_issues_once_and_answers_alike(api, redis):
    api.checkin(HK, **US_NETWORK)
    headers = {"Idempotency-Key": "call-1"}
    first = api(
        "agent",
        "POST",
        f"/v1/devices/{HK}/unlock-code",
        {"challenge": CHALLENGE, "reason": "r"},
        headers,
    )
    again = api(
        "agent",
        "POST",
        f"/v1/devices/{HK}/unlock-code",
        {"challenge": CHALLENGE, "reason": "r"},
        headers,
    )
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert len(audit_entries(redis)) == 1
    other = api(
        "agent",
        "POST",
        f"/v1/devices/{HK}/unlock-code",
        {"challenge": "9999999999", "reason": "r"},
        headers,
    )
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "r"}, "challenge"),
        ({"challenge": "012345678", "reason": "r"}, "challenge"),
        ({"challenge": "01234567890", "reason": "r"}, "challenge"),
        ({"challenge": "01234a6789", "reason": "r"}, "challenge"),
        ({"challenge": "0123456789\n", "reason": "r"}, "challenge"),
        ({"challenge": 123456789, "reason": "r"}, "challenge"),
        ({"challenge": "٠١٢٣٤٥٦٧٨٩", "reason": "r"}, "challenge"),
        ({"challenge": CHALLENGE}, "reason"),
        ({"challenge": CHALLENGE, "reason": "r", "valid_days": -1}, "valid_days"),
        ({"challenge": CHALLENGE, "reason": "r", "valid_days": 91}, "valid_days"),
        ({"challenge": CHALLENGE, "reason": "r", "valid_days": "7"}, "valid_days"),
        ({"challenge": CHALLENGE, "reason": "r", "valid_days": 7.5}, "valid_days"),
        ({"challenge": CHALLENGE, "reason": "r", "valid_days": None}, "valid_days"),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field_and_records_nothing(api, redis, body, field):
    response = api("compliance", "POST", f"/v1/devices/{HK}/unlock-code", body)
    assert response.status_code == 422, response.get_json()
    assert field in str(response.get_json()["error"]), response.get_json()
    assert redis.get(keys.device_override(HK)) is None
    assert audit_entries(redis) == []


def test_the_openapi_document_describes_the_call(api):
    spec = api("agent", "GET", "/v1/openapi.json").get_json()
    operation = spec["paths"]["/v1/devices/{imei}/unlock-code"]["post"]
    assert {"201", "403", "422"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    schema = spec["components"]["schemas"][name]
    assert set(schema["required"]) == {"challenge", "reason"}
    assert schema["properties"]["valid_days"]["maximum"] == 90


def test_the_audit_query_reads_at_most_scan_limit_entries(redis):
    from service.store.audit import AuditStore

    audit = AuditStore(redis)
    audit.append("a", "agent", "device.unlock_code", HK, {"scope": "gray"})
    for _ in range(5):
        audit.append("a", "agent", "device.unlock", UNKNOWN, {})
    found, _ = audit.query(imei=HK, action="device.unlock_code", scan_limit=6, batch=2)
    assert len(found) == 1
    found, cursor = audit.query(imei=HK, action="device.unlock_code", scan_limit=5, batch=2)
    assert found == [] and cursor is None
