"""Each device speaks only for itself: check-in proofs, the activation reset (SPEC §13)."""

from __future__ import annotations

import shutil
import threading
import time

import orjson
import pytest

from service.crypto.device_keys import (
    auth_key,
    check_proof,
    device_key,
    proof_header,
)
from service.crypto.secrets import create_secret_file
from service.engine.loading import load_bundle_dir
from service.store import keys
from tests.conftest import ROOT, audit_entries, bearer
from tests.imeis import EU, HK, US

SEED = load_bundle_dir(ROOT / "policies")
HAVANA = {"lat": 23.1136, "lon": -82.3666}
HONG_KONG = {"lat": 22.3193, "lon": 114.1694}
CUBAN_SIM = {"network": "36801"}
HK_SIM = {"network": "45400"}


@pytest.fixture
def master(tmp_path):
    """The deployment's unlock master key, handed to the app as a file."""
    path = tmp_path / "handed-out" / "unlock-master-key"
    return path, create_secret_file(path)


@pytest.fixture
def proof_app(make_app, master, tmp_path):
    """Apps with the known master key; POLICY_EXTRA (YAML text) joins the seed bundle."""

    def build(mode="observe", policy_extra=None):
        folder = tmp_path / "policies"
        if not folder.exists():
            shutil.copytree(ROOT / "policies", folder, ignore=shutil.ignore_patterns("cases"))
        if policy_extra is not None:
            (folder / "60-device-proof.yaml").write_text(policy_extra)
        return make_app(unlock_master_key_file=master[0], device_proof=mode, policies_dir=folder)

    return build


@pytest.fixture
def post(tokens, master, geo):
    """POST a check-in as raw bytes from a labelled IP; proof=True signs it with the device's
    auth key (at=unix seconds), proof=str sends that header as is."""

    def run(client, imei, ip=None, proof=False, at=None, role="device", body=None, **fields):
        raw = body if body is not None else orjson.dumps({"imei": imei, **fields})
        headers = {**bearer(tokens[role]), "Content-Type": "application/json"}
        if proof is True:
            key = auth_key(master[1], imei)
            headers["X-Device-Proof"] = proof_header(key, int(at or time.time()), raw)
        elif proof:
            headers["X-Device-Proof"] = proof
        address = geo["ips"].get(ip, ip) if ip else "127.0.0.1"
        return client.post(
            "/v1/checkin", data=raw, headers=headers, environ_base={"REMOTE_ADDR": address}
        )

    return run


def record(redis, imei) -> dict:
    return redis.hgetall(keys.device(imei))


# --- the derivations --------------------------------------------------------------------------


def test_keys_are_hmacs_of_the_master_key_over_label_and_imei():
    import hashlib
    import hmac

    master = bytes(range(32))
    assert (
        device_key(master, HK)
        == hmac.new(master, b"regionlock-unlock-v1:" + HK.encode(), hashlib.sha256).digest()
    )
    assert (
        auth_key(master, HK)
        == hmac.new(master, b"regionlock-auth-v1:" + HK.encode(), hashlib.sha256).digest()
    )
    assert device_key(master, HK) != auth_key(master, HK) != auth_key(master, EU)


def test_check_proof_names_what_is_wrong_and_accepts_the_right_one():
    key = auth_key(bytes(32), HK)
    body = b'{"imei":"%s"}' % HK.encode()
    now = 1_800_000_000
    good = proof_header(key, now, body)
    assert check_proof(key, good, body, now).valid
    assert check_proof(key, good, body, now + 300).valid
    assert "300 s" in check_proof(key, good, body, now + 301).problem
    assert not check_proof(key, good, body + b" ", now).valid
    assert not check_proof(key, good.upper(), body, now).valid
    assert not check_proof(auth_key(bytes(32), EU), good, body, now).valid
    assert check_proof(key, None, body, now).problem == "no X-Device-Proof header"
    assert not check_proof(key, "12.zz", body, now).valid


# --- modes ------------------------------------------------------------------------------------


def test_required_refuses_a_check_in_without_a_valid_proof_and_records_nothing(
    proof_app, post, redis
):
    client = proof_app("required").test_client()
    for proof, at in ((False, None), ("1.00", None), (True, time.time() - 400)):
        response = post(client, HK, proof=proof, at=at)
        assert response.status_code == 401, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "device_proof"
        assert abs(error["server_time"] - time.time()) < 5
    assert record(redis, HK) == {}
    assert redis.keys("rl:dev:*") == []
    # With a valid proof: answered, and the device is recorded as proven.
    response = post(client, HK, proof=True, gps=HONG_KONG)
    assert response.status_code == 200, response.get_json()
    stored = record(redis, HK)
    assert "proven" in stored and "unproven_checkins" not in stored


def test_required_refuses_a_proof_of_another_body(proof_app, post, master, redis):
    client = proof_app("required").test_client()
    signed = orjson.dumps({"imei": HK, "gps": HONG_KONG})
    sent = orjson.dumps({"imei": HK, "gps": HAVANA})
    header = proof_header(auth_key(master[1], HK), int(time.time()), signed)
    response = post(client, HK, proof=header, body=sent)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "device_proof"
    assert record(redis, HK) == {}


def test_the_body_is_validated_before_the_proof(proof_app, post):
    client = proof_app("required").test_client()
    assert post(client, HK, body=b"not json").status_code == 400
    response = post(client, HK, body=b'{"imei": "123"}')
    assert response.status_code == 422
    assert "imei" in response.get_json()["error"]["fields"]


def test_a_replayed_proof_is_refused_in_required_mode(proof_app, post, master, redis):
    client = proof_app("required").test_client()
    raw = orjson.dumps({"imei": HK, "gps": HONG_KONG})
    header = proof_header(auth_key(master[1], HK), int(time.time()), raw)
    assert post(client, HK, proof=header, body=raw).status_code == 200
    before = record(redis, HK)
    replay = post(client, HK, proof=header, body=raw)
    assert replay.status_code == 401
    assert "used before" in replay.get_json()["error"]["message"]
    assert record(redis, HK) == before  # nothing recorded for the replay
    ttl = redis.ttl(keys.device_used_proof(HK, header.split(".")[1]))
    assert 590 <= ttl <= 600


def test_concurrent_replays_are_accepted_once(proof_app, post, master, redis):
    app = proof_app("required")
    raw = orjson.dumps({"imei": HK, "gps": HONG_KONG})
    header = proof_header(auth_key(master[1], HK), int(time.time()), raw)
    statuses = []
    barrier = threading.Barrier(8)

    def send():
        client = app.test_client()
        barrier.wait()
        statuses.append(post(client, HK, proof=header, body=raw).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [401] * 7
    assert redis.hget(keys.device(HK), "history").count("\n") == 0
    assert "|1|" in redis.hget(keys.device(HK), "history")


def test_observe_answers_and_counts_unproven_check_ins(proof_app, post, redis, tokens):
    client = proof_app("observe").test_client()
    assert post(client, HK, gps=HONG_KONG).status_code == 200
    assert post(client, HK, proof="1.bad", gps=HONG_KONG).status_code == 200
    stored = record(redis, HK)
    assert stored["unproven_checkins"] == "2" and "proven" not in stored
    assert post(client, HK, proof=True, gps=HONG_KONG).status_code == 200
    stored = record(redis, HK)
    assert stored["unproven_checkins"] == "2" and "proven" in stored
    document = client.get(f"/v1/devices/{HK}", headers=bearer(tokens["agent"])).get_json()
    assert document["unproven_checkins"] == 2 and document["proven_at"] is not None


def test_observe_replay_is_answered_but_counted_unproven(proof_app, post, master, redis):
    client = proof_app("observe").test_client()
    raw = orjson.dumps({"imei": HK, "gps": HONG_KONG})
    header = proof_header(auth_key(master[1], HK), int(time.time()), raw)
    assert post(client, HK, proof=header, body=raw).status_code == 200
    assert post(client, HK, proof=header, body=raw).status_code == 200
    stored = record(redis, HK)
    assert "proven" in stored and stored["unproven_checkins"] == "1"


def test_off_neither_checks_nor_counts(proof_app, post, redis):
    client = proof_app("off").test_client()
    assert post(client, HK, proof="1.bad").status_code == 200
    stored = record(redis, HK)
    assert "unproven_checkins" not in stored and "proven" not in stored


def test_admin_tokens_are_exempt(proof_app, post, redis):
    client = proof_app("required").test_client()
    assert post(client, HK, role="admin").status_code == 200
    assert "unproven_checkins" not in record(redis, HK)
    assert post(client, HK, role="device").status_code == 401


def test_an_unproven_check_in_fixes_no_binding_once_the_device_has_proven_itself(
    proof_app, post, redis
):
    client = proof_app("observe").test_client()
    # Never proven: an unproven check-in binds as before (observe changes nothing yet).
    forged = post(client, US, ip="cuba", gps=HAVANA, sim=CUBAN_SIM)
    assert forged.status_code == 200
    assert orjson.loads(redis.hget(keys.device(US), "state"))["bindings"] == {"gray-market": True}
    # A device that has sent a valid proof once: a forged check-in binds nothing.
    assert post(client, HK, proof=True, ip="hong_kong", gps=HONG_KONG).status_code == 200
    redis.hdel(keys.device(HK), "state", "activation")  # as if activation were still open
    forged = post(client, HK, ip="cuba", gps=HAVANA, sim=CUBAN_SIM)
    assert forged.status_code == 200 and forged.get_json()["verdict"] == "lock"
    state = redis.hget(keys.device(HK), "state")
    assert state is None or "gray-market" not in orjson.loads(state).get("bindings", {})
    assert redis.hget(keys.device(HK), "activation") is None or (
        orjson.loads(redis.hget(keys.device(HK), "activation"))["in_territory"] is None
    )
    # The next proven check-in from its territory binds it, inside.
    home = post(client, HK, proof=True, ip="hong_kong", gps=HONG_KONG, sim=HK_SIM)
    assert home.get_json()["verdict"] == "allow"
    assert orjson.loads(redis.hget(keys.device(HK), "state"))["bindings"] == {"gray-market": False}


def test_the_verdict_echoes_the_nonce(proof_app, post):
    client = proof_app("required").test_client()
    response = post(client, HK, proof=True, nonce="n-123", gps=HONG_KONG)
    assert response.get_json()["nonce"] == "n-123"


# --- bundle: device_proof.required_for ----------------------------------------------------------


def test_required_for_makes_a_proof_required_whatever_the_setting(proof_app, post, redis):
    client = proof_app(
        "off", policy_extra='device_proof:\n  required_for: [hk-global, "35875421"]\n'
    ).test_client()
    assert post(client, HK).status_code == 401  # by distributor
    assert post(client, EU).status_code == 401  # by TAC
    assert post(client, US).status_code == 200  # not named
    assert redis.exists(keys.device(HK), keys.device(EU)) == 0
    assert post(client, HK, proof=True).status_code == 200


def test_required_for_entries_are_validated_with_paths(client, tokens):
    bundle = dict(SEED)
    bundle["device_proof"] = {"required_for": ["hk-global", "nobody", "1234567", 35387923]}
    response = client.post(
        "/v1/policy/validate", json={"bundle": bundle}, headers=bearer(tokens["editor"])
    )
    assert response.status_code == 422, response.get_json()
    fields = response.get_json()["error"]["fields"]
    assert set(fields) == {
        "device_proof.required_for.1",
        "device_proof.required_for.2",
        "device_proof.required_for.3",
    }
    assert "unknown distributor" in fields["device_proof.required_for.1"][0]
    assert "8 digits" in fields["device_proof.required_for.2"][0]


# --- the activation reset -----------------------------------------------------------------------


def test_the_repair_story_end_to_end(proof_app, post, redis, tokens):
    # 1. Today: one forged check-in (Havana GPS, a Cuban network) for a distributor's phone
    #    that was never activated binds it as a gray import; back home it stays locked.
    client = proof_app("observe").test_client()
    forged = post(client, HK, ip="cuba", gps=HAVANA, sim=CUBAN_SIM)
    assert forged.get_json()["verdict"] == "lock"
    home = post(client, HK, ip="hong_kong", gps=HONG_KONG, sim=HK_SIM)
    assert home.get_json()["verdict"] == "lock"
    assert [r["code"] for r in home.get_json()["reasons"]] == ["outside_territory"]
    assert home.get_json()["reasons"][0].get("bound") is True

    # 2. The maker names the distributor in device_proof.required_for (a new version is
    #    published): the forgery is refused.
    current = client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()
    bundle = {**SEED, "device_proof": {"required_for": ["hk-global"]}}
    published = client.post(
        "/v1/policy",
        json={"bundle": bundle, "note": "proofs", "expected_version": current["version"]},
        headers=bearer(tokens["editor"]),
    )
    assert published.status_code == 201, published.get_json()
    time.sleep(0.3)  # the worker picks the new version up (policy_poll_s 0.1 in tests)
    before = record(redis, HK)
    refused = post(client, HK, ip="cuba", gps=HAVANA, sim=CUBAN_SIM)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "device_proof"
    assert record(redis, HK) == before

    # 3. Support forgets the binding; the phone checks in from home with a proof: allowed.
    missing_reason = client.delete(
        f"/v1/devices/{HK}/activation", json={}, headers=bearer(tokens["agent"])
    )
    assert missing_reason.status_code == 422
    assert "reason" in missing_reason.get_json()["error"]["fields"]
    reset = client.delete(
        f"/v1/devices/{HK}/activation",
        json={"reason": "bound by a forged check-in", "ticket": "SUP-9"},
        headers=bearer(tokens["agent"]),
    )
    assert reset.status_code == 204, reset.get_json()
    stored = record(redis, HK)
    assert "activation" not in stored
    assert "gray-market" not in orjson.loads(stored.get("state") or "{}").get("bindings", {})
    [entry] = [e for e in audit_entries(redis) if e["action"] == "device.activation_reset"]
    assert entry["actor"] == "test-agent" and entry["imei"] == HK
    detail = orjson.loads(entry["detail"])
    assert detail["reason"] == "bound by a forged check-in" and detail["ticket"] == "SUP-9"
    assert detail["forgotten"]["bindings"] == {"gray-market": True}
    assert detail["forgotten"]["activation"]["in_territory"] is False

    allowed = post(client, HK, proof=True, ip="hong_kong", gps=HONG_KONG, sim=HK_SIM)
    assert allowed.status_code == 200
    assert allowed.get_json()["verdict"] == "allow"
    document = client.get(f"/v1/devices/{HK}", headers=bearer(tokens["agent"])).get_json()
    assert document["activation"]["in_territory"] is True
    assert document["verdict"] == "allow"

    # Nothing left to forget but the fresh binding: a second reset forgets that one; a device
    # never seen has nothing to forget.
    assert (
        client.delete(
            f"/v1/devices/{US}/activation", json={"reason": "r"}, headers=bearer(tokens["agent"])
        ).status_code
        == 404
    )


def test_a_reset_racing_a_check_in_never_undoes_it(app, redis):
    from service.devices.activation import reset_activation
    from service.store.tokens import Principal

    devices = app.extensions["regionlock"].devices
    redis.hset(
        keys.device(HK),
        mapping={
            "state": orjson.dumps({"bindings": {"gray-market": True}}),
            "activation": orjson.dumps({"at": "x", "places": {}, "in_territory": False}),
        },
    )
    calls = []
    real = devices._reset_activation

    def racing(keys, args):
        if not calls:  # a check-in lands between the read and the write
            redis.hset(keys[0], "state", orjson.dumps({"bindings": {"other": False}}))
        calls.append(1)
        return real(keys=keys, args=args)

    devices._reset_activation = racing
    forgotten = reset_activation(devices, HK, Principal("a", "agent"), "r").forgotten
    assert len(calls) == 2  # the first compare-and-set lost, the second read the new state
    assert forgotten["bindings"] == {"other": False}
    assert len([e for e in audit_entries(redis) if e["action"] == "device.activation_reset"]) == 1


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, redis_url, master, tmp_path):
    """Run `regionlock` on the test Redis with the deployment's master key file."""
    from click.testing import CliRunner

    from service.cli import main

    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    monkeypatch.setenv("REGIONLOCK_UNLOCK_MASTER_KEY_FILE", str(master[0]))
    monkeypatch.setenv("REGIONLOCK_VAR_DIR", str(tmp_path / "cli-var"))

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    return run


def test_device_keys_export_prints_csv_and_is_audited(cli, master, tmp_path, redis):
    imeis = tmp_path / "imeis.csv"
    imeis.write_text(f"imei\n{HK}\n{EU[:2]}-{EU[2:]},batch 7\n\n{HK}\n")
    result = cli("unlock-codes", "device-keys", "--file", imeis, "--actor", "factory-line-3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [
        "imei,device_key_hex,auth_key_hex",
        f"{HK},{device_key(master[1], HK).hex()},{auth_key(master[1], HK).hex()}",
        f"{EU},{device_key(master[1], EU).hex()},{auth_key(master[1], EU).hex()}",
    ]
    [entry] = audit_entries(redis)
    assert entry["action"] == "unlock_codes.device_keys_exported"
    assert entry["actor"] == "factory-line-3"
    detail = orjson.loads(entry["detail"])
    assert detail["count"] == 2 and detail["file"] == "imeis.csv"
    assert master[1].hex() not in entry["detail"] and lines[1].split(",")[1] not in entry["detail"]


def test_device_keys_export_refuses_bad_lines_and_a_foreign_master_key(
    cli, tmp_path, redis, monkeypatch
):
    imeis = tmp_path / "imeis.csv"
    imeis.write_text(f"{HK}\n{HK[:-1]}0\n")
    result = cli("unlock-codes", "device-keys", "--file", imeis)
    assert result.exit_code == 2 and "line 2" in result.stderr
    assert result.stdout == "" and audit_entries(redis) == []
    # The deployment recorded another master key: nothing is exported.
    redis.hset(keys.SECRET_IDS, "unlock-master-key", "00000000")
    imeis.write_text(f"{HK}\n")
    result = cli("unlock-codes", "device-keys", "--file", imeis)
    assert result.exit_code == 2 and "00000000" in result.stderr
    assert result.stdout == "" and audit_entries(redis) == []


def test_devices_unproven_lists_who_checked_in_without_a_proof(cli, proof_app, post, redis):
    client = proof_app("observe").test_client()
    assert post(client, HK).status_code == 200
    assert post(client, US, proof=True).status_code == 200
    assert post(client, EU).status_code == 200
    assert post(client, EU, proof=True).status_code == 200
    # EU's unproven check-in was long ago.
    redis.hset(keys.device(EU), "last_unproven", repr(time.time() - 10 * 86400))
    result = cli("devices", "unproven")
    assert result.exit_code == 0, result.output
    rows = sorted(result.stdout.splitlines()[1:])
    assert result.stdout.splitlines()[0] == "imei,unproven_checkins,last_unproven_at,proven_at"
    assert [r.split(",")[:2] for r in rows] == sorted([[HK, "1"], [EU, "1"]])
    assert [r for r in rows if r.startswith(EU)][0].split(",")[3] != ""
    recent = cli("devices", "unproven", "--since", "2")
    assert [r.split(",")[0] for r in recent.stdout.splitlines()[1:]] == [HK]


def test_openapi_documents_the_proof_header_and_its_401(client):
    spec = client.get("/v1/openapi.json").get_json()
    operation = spec["paths"]["/v1/checkin"]["post"]
    [header] = [p for p in operation["parameters"] if p["name"] == "X-Device-Proof"]
    assert header["in"] == "header" and not header["required"]
    assert "device_proof" in operation["responses"]["401"]["description"]
    reset = spec["paths"]["/v1/devices/{imei}/activation"]["delete"]
    assert {"204", "404", "422"} <= set(reset["responses"])
