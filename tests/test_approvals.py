"""Four eyes on sanctions over the API (SPEC §12.4): 202 with the request, list with diffs,
approve / reject by compliance or admin (never the requester), withdraw, 409 when the active
version moved, every state change audited in its transaction."""

from __future__ import annotations

import copy
import time

import orjson
import pytest

from service.store import keys
from service.store.tokens import ROLES, TokenStore
from tests.conftest import audit_entries, bearer
from tests.test_audit_atomic import Monitor
from tests.test_policy_api import RUSSIA, SEED, served, unknown_imei, with_sanctioned


def without_cuba() -> dict:
    bundle = copy.deepcopy(SEED)
    bundle["rules"][0]["regions"].remove("CU")
    return bundle


@pytest.fixture
def as_role(client, tokens):
    def call(role, method, path, body=None, headers=None):
        token = tokens[role] if role in tokens else role  # a role, or a raw token
        return client.open(
            path, method=method, json=body, headers={**bearer(token), **(headers or {})}
        )

    call.tokens = tokens
    return call


@pytest.fixture
def second_admin(redis, tokens):
    return TokenStore(redis).create(name="other-admin", role="admin")


def request_weakening(as_role, role="editor", bundle=None, expected=1, note="drop Cuba", **kw):
    body = {"bundle": bundle or without_cuba(), "note": note, "expected_version": expected, **kw}
    response = as_role(role, "POST", "/v1/policy", body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["approval"]


def publish_strengthening(as_role):
    """Version 2, sanctioning Russia too (no approval needed), published by the editor."""
    body = {"bundle": with_sanctioned("RU"), "note": "RU", "expected_version": 1}
    assert as_role("editor", "POST", "/v1/policy", body).status_code == 201


def actions(redis):
    return [e["action"] for e in audit_entries(redis) if e["action"].startswith("policy.")]


def active_version(as_role):
    return as_role("editor", "GET", "/v1/policy").get_json()["version"]


# --- requests ---------------------------------------------------------------------------------


def test_a_weakening_publish_is_sent_for_approval_not_published(as_role, redis):
    approval = request_weakening(as_role)
    assert len(approval["id"]) == 16
    assert approval["state"] == "pending" and approval["kind"] == "publish"
    assert approval["changes"] == [
        {
            "rule": "sanctions",
            "kind": "region_removed",
            "value": "CU",
            "before": None,
            "after": None,
        }
    ]
    assert approval["requested_by"] == "test-editor" and approval["compared_version"] == 1
    assert "bundle" not in approval
    assert active_version(as_role) == 1
    entries = [e for e in audit_entries(redis) if e["action"].startswith("policy.")]
    assert [e["action"] for e in entries] == ["policy.approval.request"]
    detail = orjson.loads(entries[0]["detail"])
    assert detail["approval"] == approval["id"] and detail["changes"] == approval["changes"]
    assert entries[0]["actor"] == "test-editor"


def test_admins_need_approval_too(as_role):
    approval = request_weakening(as_role, role="admin")
    assert approval["requested_role"] == "admin"
    assert active_version(as_role) == 1


def test_strengthening_publishes_at_once(as_role, redis):
    response = as_role(
        "editor",
        "POST",
        "/v1/policy",
        {"bundle": with_sanctioned("RU"), "note": "add", "expected_version": 1},
    )
    assert response.status_code == 201
    assert actions(redis) == ["policy.publish"]


def test_the_request_and_its_entry_share_one_transaction(as_role, redis_url):
    with Monitor(redis_url) as monitor:
        approval = request_weakening(as_role)
    block = monitor.transaction_with("policy.approval.request")
    assert any(c.startswith(f"SET {keys.policy_approval(approval['id'])} ") for c in block)
    assert any(c.startswith(f"ZADD {keys.POLICY_APPROVALS_PENDING} ") for c in block)


def test_a_weakening_rollback_is_sent_for_approval(as_role, redis):
    assert (
        as_role(
            "editor",
            "POST",
            "/v1/policy",
            {"bundle": with_sanctioned("RU"), "note": "add RU", "expected_version": 1},
        ).status_code
        == 201
    )
    response = as_role("editor", "POST", "/v1/policy/rollback", {"version": 1, "note": "undo"})
    assert response.status_code == 202, response.get_json()
    approval = response.get_json()["approval"]
    assert approval["kind"] == "rollback" and approval["rolled_back_to"] == 1
    assert [c["value"] for c in approval["changes"]] == ["RU"]
    assert active_version(as_role) == 2
    decided = as_role(
        "compliance", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert decided.status_code == 201, decided.get_json()
    body = decided.get_json()
    assert body["version"] == 3 and body["rolled_back_to"] == 1 and body["note"] == "undo"
    assert "RU" not in as_role("editor", "GET", "/v1/policy").get_json()["rules"][0]["regions"]
    assert actions(redis)[-3:] == [
        "policy.approval.request",
        "policy.rollback",
        "policy.approval.approve",
    ]


def test_the_same_key_sent_again_answers_the_same_request(as_role, redis):
    headers = {"Idempotency-Key": "weaken-1"}
    body = {"bundle": without_cuba(), "note": "drop Cuba", "expected_version": 1}
    first = as_role("editor", "POST", "/v1/policy", body, headers)
    again = as_role("editor", "POST", "/v1/policy", body, headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["approval"]["id"] == first.get_json()["approval"]["id"]
    assert len(as_role("editor", "GET", "/v1/policy/approvals").get_json()["approvals"]) == 1
    assert actions(redis) == ["policy.approval.request"]


# --- the list ---------------------------------------------------------------------------------


def test_the_list_shows_each_request_with_its_diff_against_the_active_version(as_role):
    approval = request_weakening(as_role, note="Cuba is no longer sanctioned")
    # Another (strengthening) version is published meanwhile: the diff is against it.
    publish_strengthening(as_role)
    listing = as_role("compliance", "GET", "/v1/policy/approvals").get_json()["approvals"]
    assert [a["id"] for a in listing] == [approval["id"]]
    row = listing[0]
    assert row["requested_by"] == "test-editor" and row["note"] == "Cuba is no longer sanctioned"
    assert row["compared_version"] == 1 and row["active_version"] == 2 and row["stale"] is True
    assert row["created_at"].endswith("Z") and row["expires_at"] > row["created_at"]
    assert row["diff"]["rules"]["changed"] == {"sanctions": ["regions"]}
    assert row["diff_lines"] == ["~ rule sanctions: regions"]
    assert "bundle" not in row
    one = as_role("auditor", "GET", f"/v1/policy/approvals/{approval['id']}").get_json()
    assert "CU" not in one["bundle"]["rules"][0]["regions"] and one["state"] == "pending"


# --- decisions --------------------------------------------------------------------------------


def test_compliance_approves_and_the_version_is_published(app, as_role, redis, client, tokens):
    approval = request_weakening(as_role)
    response = as_role(
        "compliance",
        "POST",
        f"/v1/policy/approvals/{approval['id']}",
        {"decision": "approve", "note": "ok per OFAC"},
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["version"] == 2 and body["note"] == "drop Cuba"
    assert body["published_by"] == "test-editor" and body["approved_by"] == "test-compliance"
    assert body["approval"] == approval["id"] and body["simulation"]["evaluated"] == 0
    active = as_role("editor", "GET", "/v1/policy").get_json()
    assert active["version"] == 2 and "CU" not in active["rules"][0]["regions"]
    assert active["approved_by"] == "test-compliance"
    served(app, 2)
    assert as_role("compliance", "GET", "/v1/policy/approvals").get_json()["approvals"] == []
    closed = as_role("editor", "GET", f"/v1/policy/approvals/{approval['id']}").get_json()
    assert closed["state"] == "approved" and closed["published_version"] == 2
    assert closed["decided_by"] == "test-compliance" and closed["decision_note"] == "ok per OFAC"
    entries = [e for e in audit_entries(redis) if e["action"].startswith("policy.")]
    assert [e["action"] for e in entries] == [
        "policy.approval.request",
        "policy.publish",
        "policy.approval.approve",
    ]
    assert entries[2]["actor"] == "test-compliance"
    assert orjson.loads(entries[2]["detail"])["version"] == 2
    again = as_role(
        "admin", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "approval_closed"


def test_approval_publishes_in_one_transaction_with_its_entries(as_role, redis_url):
    approval = request_weakening(as_role)
    with Monitor(redis_url) as monitor:
        response = as_role(
            "admin", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
        )
    assert response.status_code == 201
    block = monitor.transaction_with("policy.approval.approve")
    assert any(c.startswith(f"SET {keys.POLICY_ACTIVE} ") for c in block)
    assert any(c.startswith(f"SET {keys.policy_approval(approval['id'])} ") for c in block)
    assert sum(c.startswith(f"XADD {keys.AUDIT} ") for c in block) == 2


def test_nobody_approves_their_own_request(as_role, second_admin, redis):
    approval = request_weakening(as_role, role="admin")
    own = as_role(
        "admin", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert own.status_code == 403 and own.get_json()["error"]["code"] == "own_request"
    own_reject = as_role(
        "admin", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "reject"}
    )
    assert own_reject.status_code == 403
    assert active_version(as_role) == 1
    assert actions(redis) == ["policy.approval.request"]
    other = as_role(
        second_admin, "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert other.status_code == 201
    assert other.get_json()["approved_by"] == "other-admin"


def test_the_active_version_moved_so_the_request_is_stale(as_role, redis):
    approval = request_weakening(as_role)
    publish_strengthening(as_role)
    response = as_role(
        "compliance", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "approval_stale" and error["active_version"] == 2
    assert error["approval"]["state"] == "stale"
    assert active_version(as_role) == 2
    assert as_role("compliance", "GET", "/v1/policy/approvals").get_json()["approvals"] == []
    assert actions(redis)[-1] == "policy.approval.stale"
    again = as_role(
        "compliance", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert again.get_json()["error"]["code"] == "approval_closed"


def test_reject_closes_the_request_unpublished(as_role, redis):
    approval = request_weakening(as_role)
    response = as_role(
        "compliance",
        "POST",
        f"/v1/policy/approvals/{approval['id']}",
        {"decision": "reject", "note": "no"},
    )
    assert response.status_code == 200
    closed = response.get_json()["approval"]
    assert closed["state"] == "rejected" and closed["decided_by"] == "test-compliance"
    assert active_version(as_role) == 1
    assert actions(redis) == ["policy.approval.request", "policy.approval.reject"]
    late = as_role(
        "admin", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert late.status_code == 409 and late.get_json()["error"]["approval"]["state"] == "rejected"


def test_the_requester_withdraws_and_nobody_else(as_role, redis, tokens):
    approval = request_weakening(as_role)
    other_editor = TokenStore(redis).create(name="other-editor", role="editor")
    refused = as_role(other_editor, "DELETE", f"/v1/policy/approvals/{approval['id']}")
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "not_requester"
    assert (
        as_role("compliance", "DELETE", f"/v1/policy/approvals/{approval['id']}").status_code == 403
    )
    response = as_role("editor", "DELETE", f"/v1/policy/approvals/{approval['id']}")
    assert response.status_code == 200 and response.get_json()["approval"]["state"] == "withdrawn"
    assert actions(redis) == ["policy.approval.request", "policy.approval.withdraw"]
    assert (
        as_role(
            "compliance", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
        ).status_code
        == 409
    )


def test_a_braked_approval_stays_pending(as_role, checkin_russia):
    # Drops Cuba (a weakening) and adds Russia, which locks every recorded device.
    bundle = with_sanctioned("RU")
    bundle["rules"][0]["regions"].remove("CU")
    approval = request_weakening(as_role, bundle=bundle)
    response = as_role(
        "compliance", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "safety_brake"
    assert active_version(as_role) == 1
    listing = as_role("compliance", "GET", "/v1/policy/approvals").get_json()["approvals"]
    assert [a["id"] for a in listing] == [approval["id"]]
    forced = request_weakening(as_role, bundle=bundle, force=True)
    assert forced["force"] is True
    ok = as_role(
        "compliance", "POST", f"/v1/policy/approvals/{forced['id']}", {"decision": "approve"}
    )
    assert ok.status_code == 201 and ok.get_json()["forced"] is True


@pytest.fixture
def checkin_russia(client, tokens):
    for i in range(3):
        response = client.post(
            "/v1/checkin",
            json={"imei": unknown_imei(i), **RUSSIA},
            headers=bearer(tokens["device"]),
        )
        assert response.status_code == 200


def test_requests_expire_after_seven_days(as_role, monkeypatch):
    approval = request_weakening(as_role)
    later = time.time() + 7 * 86_400 + 1
    monkeypatch.setattr("service.store.approvals.time.time", lambda: later)
    assert as_role("compliance", "GET", "/v1/policy/approvals").get_json()["approvals"] == []
    response = as_role(
        "compliance", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "approve"}
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["approval"]["state"] == "expired"
    assert active_version(as_role) == 1


@pytest.mark.parametrize("approval_id", ["0123456789abcdef", "nope", "../x"])
def test_unknown_requests_are_404(as_role, approval_id):
    response = as_role(
        "admin", "POST", f"/v1/policy/approvals/{approval_id}", {"decision": "approve"}
    )
    assert response.status_code == 404
    assert as_role("admin", "GET", f"/v1/policy/approvals/{approval_id}").status_code == 404


def test_the_decision_is_checked(as_role):
    approval = request_weakening(as_role)
    response = as_role(
        "admin", "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "maybe"}
    )
    assert response.status_code == 422 and "decision" in response.get_json()["error"]["fields"]


# --- roles ------------------------------------------------------------------------------------

LIST_ROLES = {"compliance", "editor", "auditor", "admin"}
DECIDE_ROLES = {"compliance", "admin"}


@pytest.mark.parametrize("role", ROLES)
def test_who_lists_and_decides(as_role, role):
    approval = request_weakening(as_role)
    listing = as_role(role, "GET", "/v1/policy/approvals")
    assert listing.status_code == (200 if role in LIST_ROLES else 403)
    decided = as_role(
        role, "POST", f"/v1/policy/approvals/{approval['id']}", {"decision": "reject"}
    )
    assert decided.status_code == (200 if role in DECIDE_ROLES else 403), decided.get_json()
    if role not in DECIDE_ROLES:
        assert decided.get_json()["error"]["code"] == "forbidden"


def test_openapi_documents_the_calls(client):
    spec = client.get("/v1/openapi.json").get_json()
    assert "202" in spec["paths"]["/v1/policy"]["post"]["responses"]
    assert "202" in spec["paths"]["/v1/policy/rollback"]["post"]["responses"]
    item = spec["paths"]["/v1/policy/approvals/{approval_id}"]
    assert {"get", "post", "delete"} <= set(item)
    for method in ("post", "delete"):
        headers = {p["name"] for p in item[method].get("parameters", []) if p["in"] == "header"}
        assert "Idempotency-Key" in headers, method
    assert "SanctionsChange" in spec["components"]["schemas"]


# --- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.redis_cluster import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("approvals-cluster")) as local:
        yield local


def test_request_and_approve_on_a_cluster(cluster, make_app):
    # The request, its index and the policy keys share the {policy} slot: one EXEC each.
    app = make_app(redis_url=cluster.url)
    client = app.extensions["regionlock"].redis
    for node in client.get_primaries():
        client.flushdb(target_nodes=node)
    editor = TokenStore(client).create("c-editor", "editor")
    compliance = TokenStore(client).create("c-compliance", "compliance")
    http = app.test_client()
    body = {"bundle": without_cuba(), "note": "n", "expected_version": 1}
    sent = http.post("/v1/policy", json=body, headers={**bearer(editor), "Idempotency-Key": "k"})
    assert sent.status_code == 202, sent.get_json()
    approval_id = sent.get_json()["approval"]["id"]
    listing = http.get("/v1/policy/approvals", headers=bearer(compliance)).get_json()
    assert [a["id"] for a in listing["approvals"]] == [approval_id]
    done = http.post(
        f"/v1/policy/approvals/{approval_id}",
        json={"decision": "approve"},
        headers=bearer(compliance),
    )
    assert done.status_code == 201 and done.get_json()["version"] == 2
    actions = [f["action"] for _, f in client.xrange(keys.AUDIT) if f["actor"] != "seed"]
    assert actions[-3:] == ["policy.approval.request", "policy.publish", "policy.approval.approve"]


def test_two_approvers_at_once_publish_once(app, as_role, redis):
    import threading

    approval = request_weakening(as_role)
    second = TokenStore(redis).create(name="other-compliance", role="compliance")
    statuses = []
    barrier = threading.Barrier(2)

    def approve(token):
        client = app.test_client()
        barrier.wait()
        response = client.post(
            f"/v1/policy/approvals/{approval['id']}",
            json={"decision": "approve"},
            headers=bearer(token),
        )
        statuses.append((response.status_code, response.get_json()))

    threads = [
        threading.Thread(target=approve, args=(token,))
        for token in (second, as_role.tokens["compliance"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s for s, _ in statuses) == [201, 409], statuses
    loser = next(body for s, body in statuses if s == 409)
    assert loser["error"]["code"] == "approval_closed"
    assert loser["error"]["approval"]["state"] == "approved"
    versions = as_role("editor", "GET", "/v1/policy/versions").get_json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert actions(redis).count("policy.approval.approve") == 1


# --- Idempotency-Key on decisions ---------------------------------------------------------------


def test_a_decision_sent_again_with_its_key_is_answered_as_the_first(as_role, redis):
    approval = request_weakening(as_role)
    path = f"/v1/policy/approvals/{approval['id']}"
    key = {"Idempotency-Key": "approve-1"}
    first = as_role("compliance", "POST", path, {"decision": "approve"}, key)
    again = as_role("compliance", "POST", path, {"decision": "approve"}, key)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["version"] == first.get_json()["version"] == 2
    other = as_role("compliance", "POST", path, {"decision": "reject"}, key)
    assert (
        other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    )
    assert actions(redis).count("policy.approval.approve") == 1
    assert active_version(as_role) == 2


def test_reject_and_withdraw_sent_again_with_their_key(as_role, redis):
    first = request_weakening(as_role)
    second = request_weakening(as_role)
    for role, method, approval, body, state in (
        ("compliance", "POST", first, {"decision": "reject"}, "rejected"),
        ("editor", "DELETE", second, None, "withdrawn"),
    ):
        path = f"/v1/policy/approvals/{approval['id']}"
        key = {"Idempotency-Key": f"close-{approval['id']}"}
        answers = [as_role(role, method, path, body, key) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert [a.get_json()["approval"]["state"] for a in answers] == [state, state]
        assert "Idempotent-Replayed" not in answers[0].headers
        assert answers[1].headers["Idempotent-Replayed"] == "true"
    assert actions(redis) == [
        "policy.approval.request",
        "policy.approval.request",
        "policy.approval.reject",
        "policy.approval.withdraw",
    ]


def test_reject_and_withdraw_write_their_entry_in_the_transaction(as_role, redis_url):
    first = request_weakening(as_role)
    second = request_weakening(as_role)
    with Monitor(redis_url) as monitor:
        path = f"/v1/policy/approvals/{first['id']}"
        assert as_role("compliance", "POST", path, {"decision": "reject"}).status_code == 200
        path = f"/v1/policy/approvals/{second['id']}"
        assert as_role("editor", "DELETE", path).status_code == 200
    for action, approval in (("reject", first), ("withdraw", second)):
        block = monitor.transaction_with(f"policy.approval.{action}")
        assert any(c.startswith(f"SET {keys.policy_approval(approval['id'])} ") for c in block)
        assert any(c.startswith(f"ZREM {keys.POLICY_APPROVALS_PENDING} ") for c in block)
