"""Policy editors' API: versions, validation, simulation, safe publishing, rollback (SPEC §6)."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import orjson
import pytest

from service.engine.loading import load_bundle_dir
from service.store import keys
from service.store.tokens import ROLES, TokenStore
from tests.conftest import audit_entries, bearer
from tests.imeis import HK, US, imei

ROOT = Path(__file__).resolve().parent.parent
SEED = load_bundle_dir(ROOT / "policies")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")

RUSSIA = {"sim": {"network": "25001"}}
CUBA = {"sim": {"network": "36801"}}
USA = {"sim": {"network": "310260"}}


def unknown_imei(n: int) -> str:
    """An IMEI no distributor holds: allowed anywhere but in sanctioned regions."""
    return imei(f"49015420{n:06d}")


def with_sanctioned(*regions: str, ratio: float | None = None) -> dict:
    """The seed bundle with REGIONS added to the sanctions rule."""
    bundle = copy.deepcopy(SEED)
    bundle["rules"][0]["regions"].extend(regions)
    if ratio is not None:
        bundle["max_new_lock_ratio"] = ratio
    return bundle


@pytest.fixture
def as_role(client, tokens):
    def call(role, method, path, body=None):
        return client.open(path, method=method, json=body, headers=bearer(tokens[role]))

    return call


def served(app, version: int) -> None:
    """Wait (up to the 1 s SPEC §6 allows) until APP's worker serves VERSION."""
    policies = app.extensions["regionlock"].policies
    deadline = time.monotonic() + 1.0
    while policies.loaded_version() != version and time.monotonic() < deadline:
        time.sleep(0.02)
    assert policies.loaded_version() == version


def publish(as_role, bundle, expected, note="change", force=None, role="editor"):
    body = {"bundle": bundle, "note": note, "expected_version": expected}
    if force is not None:
        body["force"] = force
    return as_role(role, "POST", "/v1/policy", body)


def policy_audit(redis):
    return [f for f in audit_entries(redis) if f["action"].startswith("policy.")]


def snapshot(redis) -> dict:
    """Every key's serialised value (rate-limit counters aside, they count requests):
    equal snapshots mean nothing was written."""
    counters = f"{keys.PREFIX}limits"
    return {key: redis.dump(key) for key in redis.keys("*") if not key.startswith(counters)}


# --- versions ---------------------------------------------------------------------------------


def test_active_policy_is_the_seed_as_version_1(as_role):
    response = as_role("agent", "GET", "/v1/policy")
    assert response.status_code == 200
    policy = response.get_json()
    assert policy["version"] == 1 and policy["published_by"] == "seed"
    assert ISO_UTC.match(policy["published_at"])
    assert policy["note"]
    assert [r["id"] for r in policy["rules"]] == [
        "sanctions",
        "gray-market",
        "orange-sims",
        "mi-mobile-sims",
    ]
    assert [d["id"] for d in policy["distributors"]] == [
        "hk-global",
        "us-carrier",
        "eu-distri",
        "orange-fr",
        "mi-mobile-cn",
    ]


def test_publish_appends_a_version_and_keeps_the_history(as_role):
    response = publish(as_role, with_sanctioned("RU"), expected=1, note="sanction Russia")
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["version"] == 2
    assert created["published_by"] == "test-editor" and created["note"] == "sanction Russia"
    assert ISO_UTC.match(created["published_at"])
    assert created["forced"] is False and created["simulation"]["evaluated"] == 0

    active = as_role("auditor", "GET", "/v1/policy").get_json()
    assert active["version"] == 2 and "RU" in active["rules"][0]["regions"]

    listing = as_role("compliance", "GET", "/v1/policy/versions").get_json()
    assert listing["active_version"] == 2
    assert [v["version"] for v in listing["versions"]] == [2, 1]  # newest first
    assert set(listing["versions"][0]) == {"version", "published_at", "published_by", "note"}

    first = as_role("agent", "GET", "/v1/policy/versions/1").get_json()
    assert first["version"] == 1 and "RU" not in first["rules"][0]["regions"]
    assert as_role("agent", "GET", "/v1/policy/versions/2").get_json()["note"] == "sanction Russia"
    missing = as_role("agent", "GET", "/v1/policy/versions/99")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"


def test_the_bundle_read_back_can_be_published_as_is(as_role):
    current = as_role("editor", "GET", "/v1/policy").get_json()
    current["next_checkin_s"] = 3600
    response = publish(as_role, current, expected=current["version"])
    assert response.status_code == 201, response.get_json()
    assert as_role("editor", "GET", "/v1/policy").get_json()["next_checkin_s"] == 3600


def test_stale_expected_version_is_a_conflict(as_role, redis):
    assert publish(as_role, with_sanctioned("RU"), expected=1).status_code == 201
    stale = publish(as_role, with_sanctioned("BY"), expected=1)
    assert stale.status_code == 409
    error = stale.get_json()["error"]
    assert error["code"] == "version_conflict" and error["active_version"] == 2
    policy = as_role("editor", "GET", "/v1/policy").get_json()
    assert policy["version"] == 2 and "BY" not in policy["rules"][0]["regions"]
    assert len(policy_audit(redis)) == 1


def test_publish_writes_exactly_one_audit_entry(as_role, redis):
    publish(as_role, with_sanctioned("RU"), expected=1, note="why", role="admin")
    [entry] = policy_audit(redis)
    assert entry["action"] == "policy.publish"
    assert (entry["actor"], entry["role"]) == ("test-admin", "admin")
    assert orjson.loads(entry["detail"]) == {
        "version": 2,
        "note": "why",
        "forced": False,
        "changes": {},
    }
    listed = as_role("auditor", "GET", "/v1/audit?action=policy.publish").get_json()["entries"]
    # Newest first; the seed bundle's version 1 has its own entry (issue 12.4).
    assert [e["actor"] for e in listed] == ["test-admin", "seed"]


def test_publish_needs_note_and_expected_version(as_role):
    response = as_role("editor", "POST", "/v1/policy", {"bundle": SEED})
    assert response.status_code == 422
    assert {"note", "expected_version"} <= set(response.get_json()["error"]["fields"])


def test_invalid_bundle_is_not_published(as_role, redis):
    bad = with_sanctioned("XX")
    response = publish(as_role, bad, expected=1)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_bundle"
    assert list(error["fields"]) == ["rules.0.regions.7"]
    assert as_role("editor", "GET", "/v1/policy").get_json()["version"] == 1
    assert policy_audit(redis) == []


# --- validation -------------------------------------------------------------------------------


def test_validate_accepts_a_valid_bundle(as_role):
    response = as_role("editor", "POST", "/v1/policy/validate", {"bundle": SEED})
    assert response.status_code == 200 and response.get_json() == {"valid": True}


def test_validate_reports_every_error_with_its_path(as_role):
    bundle = copy.deepcopy(SEED)
    bundle["rules"][0]["regions"][2] = "ZZ"
    bundle["rules"][0]["signals"].append("radio")
    bundle["rules"][1]["min_signals"] = 9
    bundle["distributors"][1]["allocations"].append({"tac": "35387923"})  # hk-global's TAC
    bundle["distributors"][2]["allocations"][2] = {"from": "35875423999999", "to": "35875423000000"}
    response = as_role("editor", "POST", "/v1/policy/validate", {"bundle": bundle})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_bundle" and error["message"]
    assert set(error["fields"]) == {
        "rules.0.regions.2",
        "rules.0.signals.3",
        "rules.1.min_signals",
        "distributors.1.allocations.2",
        "distributors.2.allocations.2.from",
    }
    assert "hk-global" in error["fields"]["distributors.1.allocations.2"][0]


@pytest.mark.parametrize("body", [{}, {"bundle": [1, 2]}, {"bundle": "rules: []"}])
def test_validate_needs_a_bundle_object(as_role, body):
    response = as_role("editor", "POST", "/v1/policy/validate", body)
    assert response.status_code == 422
    assert list(response.get_json()["error"]["fields"]) == ["bundle"]


def test_policy_calls_accept_bundles_bigger_than_other_calls(as_role, client, tokens):
    big = copy.deepcopy(SEED)
    big["distributors"][0]["allocations"] = [
        {"from": f"70{i:06d}000000", "to": f"70{i:06d}000099"} for i in range(30_000)
    ]
    payload = orjson.dumps({"bundle": big})
    assert len(payload) > 1 << 20  # more than the app-wide 1 MiB limit
    response = client.post(
        "/v1/policy/validate",
        data=payload,
        content_type="application/json",
        headers=bearer(tokens["editor"]),
    )
    assert response.status_code == 200, response.get_json()
    padded = orjson.dumps({"imei": HK, "model": "x" * (1 << 20)})
    checkin = client.post(
        "/v1/checkin",
        data=padded,
        content_type="application/json",
        headers=bearer(tokens["device"]),
    )
    assert checkin.status_code == 413


# --- simulation -------------------------------------------------------------------------------


def test_simulate_counts_changes_with_samples_and_writes_nothing(as_role, checkin, redis):
    russians = [unknown_imei(i) for i in range(7)]
    for device in russians:
        assert checkin(device, **RUSSIA)["verdict"] == "allow"
    assert checkin(US, **USA)["verdict"] == "allow"
    assert checkin(unknown_imei(50), **CUBA)["verdict"] == "lock"
    before = snapshot(redis)

    candidate = with_sanctioned("RU")
    candidate["rules"][0]["regions"].remove("CU")
    response = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": candidate})
    assert response.status_code == 200, response.get_json()
    report = response.get_json()
    assert report["evaluated"] == 9 and report["skipped"] == 0
    assert report["changes"] == {"allow->lock": 7, "lock->allow": 1}
    assert len(report["samples"]["allow->lock"]) == 5
    assert set(report["samples"]["allow->lock"]) <= set(russians)
    assert report["samples"]["lock->allow"] == [unknown_imei(50)]
    assert report["verdicts"] == {
        "active": {"allow": 8, "lock": 1},
        "candidate": {"allow": 2, "lock": 7},
    }
    assert report["would_brake"] is True and report["active_version"] == 1
    assert snapshot(redis) == before  # a replay is pure


def test_simulate_applies_each_devices_override(as_role, checkin):
    unlocked, locked, plain = unknown_imei(1), unknown_imei(2), unknown_imei(3)
    for device in (unlocked, locked, plain):
        checkin(device, **RUSSIA)
    compliance_unlock = {"reason": "cleared", "ticket": "CMP-1"}
    unlock = as_role("compliance", "POST", f"/v1/devices/{unlocked}/unlock", compliance_unlock)
    assert unlock.status_code == 201
    lock = as_role("agent", "POST", f"/v1/devices/{locked}/lock", {"reason": "stolen"})
    assert lock.status_code == 201
    report = as_role(
        "editor", "POST", "/v1/policy/simulate", {"bundle": with_sanctioned("RU")}
    ).get_json()
    # The unlocked device stays allowed, the locked one was locked already: only one changes.
    assert report["changes"] == {"allow->lock": 1}
    assert report["samples"] == {"allow->lock": [plain]}
    assert report["verdicts"]["active"] == {"allow": 2, "lock": 1}


def test_simulate_replays_the_stored_device_state(as_role, checkin):
    # Activated in the US: a gray import of hk-global, bound for good by the activation rule.
    checkin(HK, **USA)
    assert checkin(HK, **{"sim": {"network": "45400"}})["verdict"] == "lock"
    candidate = copy.deepcopy(SEED)
    candidate["distributors"][0]["territories"].append("US")
    report = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": candidate}).get_json()
    # Its last check-in was at home; the binding (not the territory list) keeps it locked.
    assert report["evaluated"] == 1 and report["changes"] == {}


def test_simulate_with_grace_periods_and_records_without_facts(as_role, checkin, redis):
    assert checkin(HK, **USA)["verdict"] == "lock"  # a gray import
    redis.hset(keys.device(unknown_imei(9)), mapping={"verdict": "allow"})  # no facts kept
    candidate = copy.deepcopy(SEED)
    candidate["rules"][1]["grace_days"] = 7
    report = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": candidate}).get_json()
    # With a grace period the replay decides at the recorded time: a warning, not a lock yet.
    assert report["evaluated"] == 1 and report["skipped"] == 1
    assert report["changes"] == {"lock->warn": 1} and report["samples"] == {"lock->warn": [HK]}


def test_simulate_rejects_an_invalid_bundle(as_role):
    response = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": with_sanctioned("XX")})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_bundle"


# --- safety brake -----------------------------------------------------------------------------


def test_safety_brake_refuses_mass_locking_unless_forced(app, as_role, checkin, redis):
    devices = [unknown_imei(i) for i in range(10)]
    for device in devices:
        checkin(device, **RUSSIA)
    braked = publish(as_role, with_sanctioned("RU"), expected=1, note="oops")
    assert braked.status_code == 409
    error = braked.get_json()["error"]
    assert error["code"] == "safety_brake"
    assert error["message"].startswith("safety brake: 10 of 10 recorded devices (100.0%) would go")
    report = error["report"]
    assert report["evaluated"] == 10 and report["changes"] == {"allow->lock": 10}
    assert len(report["samples"]["allow->lock"]) == 5
    assert report["allow_to_lock_ratio"] == 1.0 and report["max_new_lock_ratio"] == 0.05
    assert as_role("editor", "GET", "/v1/policy").get_json()["version"] == 1
    assert policy_audit(redis) == []

    forced = publish(as_role, with_sanctioned("RU"), expected=1, note="on purpose", force=True)
    assert forced.status_code == 201
    assert forced.get_json()["forced"] is True
    [entry] = policy_audit(redis)
    detail = orjson.loads(entry["detail"])
    assert detail == {
        "version": 2,
        "note": "on purpose",
        "forced": True,
        "changes": {"allow->lock": 10},
    }
    served(app, 2)
    assert checkin(devices[0], **RUSSIA)["verdict"] == "lock"


def test_safety_brake_allows_up_to_the_ratio(as_role, checkin):
    # 1 of 20 recorded devices (5%) is not *more* than max_new_lock_ratio 0.05.
    checkin(unknown_imei(0), **RUSSIA)
    for i in range(1, 20):
        checkin(unknown_imei(i), **USA)
    response = publish(as_role, with_sanctioned("RU"), expected=1)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["simulation"]["changes"] == {"allow->lock": 1}


def test_safety_brake_uses_the_candidates_ratio(as_role, checkin):
    for i in range(4):
        checkin(unknown_imei(i), **(RUSSIA if i < 2 else USA))  # 2 of 4 would lock: 50%
    assert publish(as_role, with_sanctioned("RU", ratio=0.4), expected=1).status_code == 409
    assert publish(as_role, with_sanctioned("RU", ratio=0.5), expected=1).status_code == 201


def test_no_recorded_devices_no_brake(as_role):
    everything = with_sanctioned("RU", "US", "CN", "IN", "BR", ratio=0.0)
    assert publish(as_role, everything, expected=1).status_code == 201


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_publishes_a_copy_of_an_earlier_version(as_role, redis):
    # Not a sanctions change: undoing one that adds a region would need approval (SPEC §12.4).
    publish(as_role, {**SEED, "next_checkin_s": 3600}, expected=1)
    response = as_role("editor", "POST", "/v1/policy/rollback", {"version": 1, "note": "undo"})
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["version"] == 3 and created["rolled_back_to"] == 1
    assert created["note"] == "undo" and created["published_by"] == "test-editor"
    active = as_role("editor", "GET", "/v1/policy").get_json()
    first = as_role("editor", "GET", "/v1/policy/versions/1").get_json()
    strip = ("version", "published_at", "published_by", "note")
    assert active["version"] == 3
    assert {k: v for k, v in active.items() if k not in strip} == {
        k: v for k, v in first.items() if k not in strip
    }
    listing = as_role("editor", "GET", "/v1/policy/versions").get_json()
    assert [v["version"] for v in listing["versions"]] == [3, 2, 1]
    entries = policy_audit(redis)
    assert [e["action"] for e in entries] == ["policy.publish", "policy.rollback"]
    assert orjson.loads(entries[1]["detail"]) == {"version": 3, "rolled_back_to": 1, "note": "undo"}


def test_rollback_to_an_unknown_version_is_404(as_role, redis):
    response = as_role("editor", "POST", "/v1/policy/rollback", {"version": 7, "note": "x"})
    assert response.status_code == 404
    assert response.get_json()["error"]["message"] == "there is no policy version 7"
    assert as_role("editor", "GET", "/v1/policy").get_json()["version"] == 1
    assert policy_audit(redis) == []


def test_rollback_is_not_braked(app, as_role, checkin):
    for i in range(5):
        checkin(unknown_imei(i), **RUSSIA)
    assert publish(as_role, with_sanctioned("RU"), expected=1, force=True).status_code == 201
    # lock->allow: no brake, but dropping RU weakens sanctions: approved (SPEC §12.4).
    requested = publish(as_role, SEED, expected=2)
    assert requested.status_code == 202
    approval = requested.get_json()["approval"]["id"]
    decided = as_role(
        "compliance", "POST", f"/v1/policy/approvals/{approval}", {"decision": "approve"}
    )
    assert decided.status_code == 201
    # Back to version 2 turns every recorded device from allow to lock: restored anyway.
    response = as_role("editor", "POST", "/v1/policy/rollback", {"version": 2, "note": "redo"})
    assert response.status_code == 201
    served(app, 4)
    assert checkin(unknown_imei(0), **RUSSIA)["verdict"] == "lock"


# --- workers ----------------------------------------------------------------------------------


def test_every_worker_serves_a_new_version_within_a_second(make_app, tokens):
    # Two apps on one Redis, each with its own policy cache and watcher: two granian workers.
    first = make_app(policy_poll_s=0.5).test_client()
    second = make_app(policy_poll_s=0.5).test_client()
    device = unknown_imei(1)

    def checkin_on(worker):
        response = worker.post(
            "/v1/checkin", json={"imei": device, **RUSSIA}, headers=bearer(tokens["device"])
        )
        assert response.status_code == 200
        return response.get_json()

    before = checkin_on(second)
    assert (before["policy_version"], before["verdict"]) == (1, "allow")
    response = first.post(
        "/v1/policy",
        json={"bundle": with_sanctioned("RU"), "note": "n", "expected_version": 1, "force": True},
        headers=bearer(tokens["editor"]),
    )
    assert response.status_code == 201
    published = time.monotonic()
    seen = before
    while seen["policy_version"] != 2 and time.monotonic() - published < 1.0:
        time.sleep(0.02)
        seen = checkin_on(second)
    assert seen["policy_version"] == 2, "the second worker still serves version 1 after 1 s"
    assert seen["verdict"] == "lock"


# --- roles ------------------------------------------------------------------------------------

# endpoint -> (method, path, body, status when allowed)
ENDPOINTS = {
    "read": ("GET", "/v1/policy", None, 200),
    "versions": ("GET", "/v1/policy/versions", None, 200),
    "version": ("GET", "/v1/policy/versions/1", None, 200),
    "validate": ("POST", "/v1/policy/validate", {"bundle": SEED}, 200),
    "simulate": ("POST", "/v1/policy/simulate", {"bundle": SEED}, 200),
    "publish": ("POST", "/v1/policy", {"bundle": SEED, "note": "n", "expected_version": 1}, 201),
    "rollback": ("POST", "/v1/policy/rollback", {"version": 1, "note": "n"}, 201),
}
READERS = {"agent", "compliance", "editor", "auditor", "admin"}
WRITERS = {"editor", "admin"}
ALLOWED = {
    "read": READERS,
    "versions": READERS,
    "version": READERS,
    "validate": WRITERS,
    "simulate": WRITERS,
    "publish": WRITERS,
    "rollback": WRITERS,
}
TABLE = [(role, endpoint, role in ALLOWED[endpoint]) for endpoint in ENDPOINTS for role in ROLES]


@pytest.mark.parametrize(("role", "endpoint", "allowed"), TABLE)
def test_role_endpoint_status(as_role, role, endpoint, allowed):
    method, path, body, ok_status = ENDPOINTS[endpoint]
    response = as_role(role, method, path, body)
    assert response.status_code == (ok_status if allowed else 403), response.get_json()
    if not allowed:
        assert response.get_json()["error"]["code"] == "forbidden"


def test_policy_calls_need_a_token(client):
    for method, path, body, _ in ENDPOINTS.values():
        response = client.open(path, method=method, json=body)
        assert response.status_code == 401


# --- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.redis_cluster import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("policy-cluster")) as local:
        yield local


def test_simulate_and_publish_on_a_cluster(cluster, make_app):
    # Device records spread over three masters: SCAN must visit each, MGET cannot span slots.
    app = make_app(redis_url=cluster.url)
    client = app.extensions["regionlock"].redis
    for node in client.get_primaries():
        client.flushdb(target_nodes=node)
    editor = TokenStore(client).create("c-editor", "editor")
    device = TokenStore(client).create("c-device", "device")
    compliance = TokenStore(client).create("c-compliance", "compliance")
    http = app.test_client()
    phones = [unknown_imei(i) for i in range(12)]
    for phone in phones:
        response = http.post("/v1/checkin", json={"imei": phone, **RUSSIA}, headers=bearer(device))
        assert response.status_code == 200
    assert len({client.get_node_from_key(keys.device(p)).name for p in phones}) > 1
    unlock = http.post(
        f"/v1/devices/{phones[0]}/unlock", json={"reason": "cleared"}, headers=bearer(compliance)
    )
    assert unlock.status_code == 201
    body = {"bundle": with_sanctioned("RU"), "note": "n", "expected_version": 1}
    braked = http.post("/v1/policy", json=body, headers=bearer(editor))
    assert braked.status_code == 409
    report = braked.get_json()["error"]["report"]
    assert report["evaluated"] == 12 and report["changes"] == {"allow->lock": 11}
    assert phones[0] not in report["samples"]["allow->lock"]
    forced = http.post("/v1/policy", json={**body, "force": True}, headers=bearer(editor))
    assert forced.status_code == 201 and forced.get_json()["version"] == 2
