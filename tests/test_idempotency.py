"""Issue 12.7: an Idempotency-Key on every state-changing call, beyond the override calls
(tests/test_override_races.py): policy publish, policy rollback, the activation reset."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from urllib.parse import urlparse

import orjson
import pytest

from service.engine.loading import load_bundle_dir
from service.store import keys
from tests.conftest import audit_entries, bearer
from tests.imeis import HK, US
from tests.test_override_races import SlowReplies

ROOT = Path(__file__).resolve().parent.parent
SEED = load_bundle_dir(ROOT / "policies")


def _with_note(bundle: dict, text: str) -> dict:
    changed = copy.deepcopy(bundle)
    changed["rules"][0]["regions"].append(text)
    return changed


def _actions(redis, action: str) -> list[dict]:
    return [e for e in audit_entries(redis) if e["action"] == action]


def _active(client, tokens) -> int:
    return client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()["version"]


def _bound(redis, imei: str) -> None:
    redis.hset(
        keys.device(imei),
        mapping={
            "state": orjson.dumps({"bindings": {"gray-market": True}}),
            "activation": orjson.dumps({"at": "x", "places": {}, "in_territory": False}),
        },
    )


def test_the_same_publish_twice_with_one_key_makes_one_version(client, tokens, redis):
    active = _active(client, tokens)
    headers = {**bearer(tokens["editor"]), "Idempotency-Key": "pub-1"}
    body = {"bundle": _with_note(SEED, "IR"), "note": "add IR", "expected_version": active}
    first = client.post("/v1/policy", json=body, headers=headers)
    assert first.status_code == 201, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    # The retry (say, after a lost answer): expected_version is stale now, yet it is answered
    # as the first call was, not with a 409, and nothing is published again.
    second = client.post("/v1/policy", json=body, headers=headers)
    assert second.status_code == 201, second.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json() == first.get_json()
    assert first.get_json()["version"] == active + 1
    assert _active(client, tokens) == active + 1
    assert len(redis.hkeys(keys.POLICY_VERSIONS)) == active + 1
    assert len(_actions(redis, "policy.publish")) == 1

    # The same key with another body: refused, naming the header; nothing published.
    other = client.post("/v1/policy", json={**body, "note": "other"}, headers=headers)
    assert other.status_code == 422
    error = other.get_json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert list(error["fields"]) == ["Idempotency-Key"]
    assert _active(client, tokens) == active + 1
    assert len(_actions(redis, "policy.publish")) == 1

    # Keys are per token name: another editor's "pub-1" is another call (a 409 here: stale).
    other_editor = {**bearer(tokens["admin"]), "Idempotency-Key": "pub-1"}
    assert client.post("/v1/policy", json=body, headers=other_editor).status_code == 409


def test_without_a_key_each_publish_is_its_own(client, tokens, redis):
    active = _active(client, tokens)
    body = {"bundle": _with_note(SEED, "IR"), "note": "n", "expected_version": active}
    headers = bearer(tokens["editor"])
    assert client.post("/v1/policy", json=body, headers=headers).status_code == 201
    assert client.post("/v1/policy", json=body, headers=headers).status_code == 409
    assert redis.keys(keys.policy_idempotency("*")) == []


def test_the_same_rollback_twice_with_one_key_makes_one_version(client, tokens, redis):
    active = _active(client, tokens)
    editor = bearer(tokens["editor"])
    body = {"bundle": _with_note(SEED, "IR"), "note": "n", "expected_version": active}
    assert client.post("/v1/policy", json=body, headers=editor).status_code == 201
    headers = {**editor, "Idempotency-Key": "undo-1"}
    rollback = {"version": active, "note": "undo"}
    first = client.post("/v1/policy/rollback", json=rollback, headers=headers)
    assert first.status_code == 201, first.get_json()
    second = client.post("/v1/policy/rollback", json=rollback, headers=headers)
    assert second.status_code == 201, second.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json() == first.get_json()
    assert first.get_json()["version"] == active + 2
    assert _active(client, tokens) == active + 2
    assert len(_actions(redis, "policy.rollback")) == 1

    other = client.post(
        "/v1/policy/rollback", json={"version": active + 1, "note": "undo"}, headers=headers
    )
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert _active(client, tokens) == active + 2
    assert len(_actions(redis, "policy.rollback")) == 1


def test_the_same_activation_reset_twice_with_one_key_is_applied_once(client, tokens, redis):
    _bound(redis, HK)
    headers = {**bearer(tokens["agent"]), "Idempotency-Key": "reset-1"}
    body = {"reason": "forged check-in", "ticket": "SUP-1"}
    first = client.delete(f"/v1/devices/{HK}/activation", json=body, headers=headers)
    assert first.status_code == 204, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    # A check-in binds the device again; the retry must not forget this new binding.
    _bound(redis, HK)
    second = client.delete(f"/v1/devices/{HK}/activation", json=body, headers=headers)
    assert second.status_code == 204
    assert second.headers["Idempotent-Replayed"] == "true"
    assert redis.hget(keys.device(HK), "activation") is not None
    assert len(_actions(redis, "device.activation_reset")) == 1

    other = client.delete(
        f"/v1/devices/{HK}/activation", json={"reason": "another"}, headers=headers
    )
    assert other.status_code == 422
    error = other.get_json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert list(error["fields"]) == ["Idempotency-Key"]
    assert redis.hget(keys.device(HK), "activation") is not None
    assert len(_actions(redis, "device.activation_reset")) == 1

    # Without a key, a reset is a reset: it forgets the new binding.
    plain = client.delete(
        f"/v1/devices/{HK}/activation", json=body, headers=bearer(tokens["agent"])
    )
    assert plain.status_code == 204 and "Idempotent-Replayed" not in plain.headers
    assert redis.hget(keys.device(HK), "activation") is None
    assert len(_actions(redis, "device.activation_reset")) == 2


def test_a_reset_records_its_key_in_the_device_slot(client, tokens, redis):
    _bound(redis, US)
    headers = {**bearer(tokens["agent"]), "Idempotency-Key": "reset-2"}
    response = client.delete(f"/v1/devices/{US}/activation", json={"reason": "r"}, headers=headers)
    assert response.status_code == 204
    [record_key] = redis.keys(keys.idempotency(US, "*"))
    assert "{" + US + "}" in record_key
    assert 0 < redis.ttl(record_key) <= 24 * 3600


def test_openapi_documents_the_key_on_every_state_changing_call(client):
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    for path, method in (
        ("/v1/policy", "post"),
        ("/v1/policy/rollback", "post"),
        ("/v1/devices/{imei}/activation", "delete"),
    ):
        names = {
            p["name"] for p in paths[path][method].get("parameters", []) if p["in"] == "header"
        }
        assert "Idempotency-Key" in names, path
        assert "503" in paths[path][method]["responses"], path


@pytest.fixture
def slow(redis_url):
    parsed = urlparse(redis_url)
    proxy = SlowReplies(parsed.hostname, parsed.port)
    yield proxy
    proxy.close()


def test_a_publish_whose_reply_is_late_is_said_unknown_and_retried_once(
    make_app, slow, redis_url, tokens, redis
):
    db = urlparse(redis_url).path or "/0"
    app = make_app(redis_url=f"redis://127.0.0.1:{slow.port}{db}", redis_timeout_s=1.0)
    client = app.test_client()
    active = _active(client, tokens)
    headers = {**bearer(tokens["editor"]), "Idempotency-Key": "pub-late"}
    body = {"bundle": _with_note(SEED, "IR"), "note": "late", "expected_version": active}
    slow.hold(b"EXEC", b"policy.publish", count=1, delay_s=2.0)
    response = client.post("/v1/policy", json=body, headers=headers)
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "outcome_unknown"
    assert response.headers["Retry-After"]
    time.sleep(2.5)  # the held reply arrives; the breaker closes again
    assert int(redis.get(keys.POLICY_ACTIVE)) == active + 1
    retried = client.post("/v1/policy", json=body, headers=headers)
    assert retried.status_code == 201, retried.get_json()
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_json()["version"] == active + 1
    assert int(redis.get(keys.POLICY_ACTIVE)) == active + 1
    assert len(_actions(redis, "policy.publish")) == 1


def test_a_reset_whose_reply_is_late_is_said_unknown_and_retried_once(
    make_app, slow, redis_url, tokens, redis
):
    db = urlparse(redis_url).path or "/0"
    app = make_app(redis_url=f"redis://127.0.0.1:{slow.port}{db}", redis_timeout_s=1.0)
    client = app.test_client()
    agent = bearer(tokens["agent"])
    _bound(redis, US)  # loads the script, so the held reply is the reset's own
    assert client.delete(f"/v1/devices/{US}/activation", json={"reason": "w"}, headers=agent)
    _bound(redis, HK)
    headers = {**agent, "Idempotency-Key": "reset-late"}
    slow.hold(b"EVALSHA", b"device.activation_reset", count=1, delay_s=2.0)
    response = client.delete(f"/v1/devices/{HK}/activation", json={"reason": "r"}, headers=headers)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "outcome_unknown"
    time.sleep(2.5)
    assert redis.hget(keys.device(HK), "activation") is None
    retried = client.delete(f"/v1/devices/{HK}/activation", json={"reason": "r"}, headers=headers)
    assert retried.status_code == 204
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert len([e for e in _actions(redis, "device.activation_reset") if e["imei"] == HK]) == 1
