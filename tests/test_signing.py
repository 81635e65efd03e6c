"""Signed verdicts (SPEC §4): Ed25519 over canonical JSON, the JWK set at /v1/keys, rotation."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time

import orjson
import pytest
import redis as redis_lib
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from service.crypto.secrets import SharedSecret, load_shared_secret
from service.crypto.signing import (
    KEK_NAME,
    KeyRing,
    KeyRingError,
    b64url,
    b64url_decode,
    canonical_json,
    next_kid,
    signed_bytes,
    verify_with_jwk,
)
from service.store import keys
from service.store.signing_keys import SigningKeyStore
from tests.conftest import bearer
from tests.imeis import HK, UNKNOWN

HAVANA = {"lat": 23.1136, "lon": -82.3666}


def _checkin(client, token, **body):
    response = client.post("/v1/checkin", json={"imei": UNKNOWN, **body}, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response


def _jwks(client, tokens) -> dict[str, dict]:
    response = client.get("/v1/keys", headers=bearer(tokens["device"]))
    assert response.status_code == 200
    return {jwk["kid"]: jwk for jwk in response.get_json()["keys"]}


def firmware_verifies(document: dict, jwks: dict[str, dict]) -> bool:
    """What firmware does, with nothing of ours: a stock JSON canonicaliser and the JWK."""
    jwk = jwks.get(document.get("kid"))
    if jwk is None or jwk["kty"] != "OKP" or jwk["crv"] != "Ed25519" or jwk["alg"] != "EdDSA":
        return False
    body = {k: v for k, v in document.items() if k != "signature"}
    message = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    try:
        public.verify(b64url_decode(document["signature"]), message.encode("utf-8"))
    except Exception:
        return False
    return True


def test_verdict_verifies_with_the_published_key(client, tokens):
    answer = _checkin(client, tokens["device"], gps=HAVANA).get_json()
    assert answer["verdict"] == "lock"
    jwks = _jwks(client, tokens)
    assert re.fullmatch(r"\d{4}-\d{2}-[a-z]+", answer["kid"])
    assert set(jwks) == {answer["kid"]}
    assert jwks[answer["kid"]]["use"] == "sig"
    assert verify_with_jwk(answer, jwks[answer["kid"]])
    assert firmware_verifies(answer, jwks)
    # base64url without padding: 64 signature bytes are 86 characters, no '=', '+' or '/'.
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}", answer["signature"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("verdict", "allow"),
        ("reasons", []),
        ("imei", HK),
        ("nonce", "other"),
        ("next_checkin_s", 1),
        ("decided_at", "2030-01-01T00:00:00Z"),
        ("kid", "1999-01-a"),
        ("extra", True),
    ],
)
def test_tampered_verdict_fails(client, tokens, field, value):
    answer = _checkin(client, tokens["device"], gps=HAVANA, nonce="n-1").get_json()
    jwks = _jwks(client, tokens)
    assert firmware_verifies(answer, jwks)
    tampered = {**answer, field: value}
    assert not firmware_verifies(tampered, jwks)
    assert not verify_with_jwk(tampered, next(iter(jwks.values())))


def test_signature_from_another_key_fails(client, tokens):
    answer = _checkin(client, tokens["device"]).get_json()
    body = {k: v for k, v in answer.items() if k != "signature"}
    # Same kid, same canonical bytes, another private key.
    forged = {**body, "signature": b64url(Ed25519PrivateKey.generate().sign(canonical_json(body)))}
    assert not firmware_verifies(forged, _jwks(client, tokens))


def test_body_is_the_canonical_form(client, tokens):
    response = _checkin(client, tokens["device"], nonce="abc")
    answer = response.get_json()
    # What was sent is the signed canonical bytes with the signature as one more sorted key.
    assert response.data == canonical_json(answer)
    assert b" " not in signed_bytes(answer)
    assert list(orjson.loads(signed_bytes(answer))) == sorted(k for k in answer if k != "signature")


def test_nonce_is_echoed_and_signed(client, tokens):
    answer = _checkin(client, tokens["device"], nonce="f3a9-c2").get_json()
    assert answer["nonce"] == "f3a9-c2"
    assert firmware_verifies(answer, _jwks(client, tokens))
    replay = {**answer, "nonce": "another-request"}
    assert not firmware_verifies(replay, _jwks(client, tokens))


def test_non_ascii_stays_utf8_in_the_signed_form(client, tokens):
    nonce = "ключ-é-日本-🔒"
    answer = _checkin(client, tokens["device"], nonce=nonce).get_json()
    assert answer["nonce"] == nonce
    canonical = signed_bytes(answer)
    assert nonce.encode("utf-8") in canonical and b"\\u" not in canonical
    assert firmware_verifies(answer, _jwks(client, tokens))


@pytest.mark.parametrize("nonce", ["", "x" * 129, 12, ["a"]])
def test_bad_nonce_is_422(client, tokens, redis, nonce):
    response = client.post(
        "/v1/checkin", json={"imei": HK, "nonce": nonce}, headers=bearer(tokens["device"])
    )
    assert response.status_code == 422
    assert set(response.get_json()["error"]["fields"]) == {"nonce"}
    assert redis.keys("rl:dev:*") == []


def test_nonce_of_128_characters_is_accepted(client, tokens):
    assert _checkin(client, tokens["device"], nonce="n" * 128).get_json()["nonce"] == "n" * 128


def test_keys_need_a_token_of_any_role_and_are_revalidated(client, tokens):
    assert client.get("/v1/keys").status_code == 401
    for role in ("device", "agent", "auditor"):
        assert client.get("/v1/keys", headers=bearer(tokens[role])).status_code == 200
    response = client.get("/v1/keys", headers=bearer(tokens["device"]))
    assert response.headers["Cache-Control"] == "no-cache"
    again = client.get(
        "/v1/keys", headers={**bearer(tokens["device"]), "If-None-Match": response.headers["ETag"]}
    )
    assert again.status_code == 304
    [jwk] = response.get_json()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
    assert len(b64url_decode(jwk["x"])) == 32


def _ring(redis, app=None, folder=None, **options) -> KeyRing:
    """Another process's view of the deployment's ring (the CLI, another host), with the KEK
    the app uses (or the one in FOLDER)."""
    folder = folder or app.extensions["regionlock"].settings.key_ring_dir
    kek = load_shared_secret(KEK_NAME, folder / KEK_NAME)
    return KeyRing(SigningKeyStore(redis), kek, **options)


def test_rotation_is_picked_up_and_old_key_stays_published(make_app, tokens, redis):
    app = make_app(keys_refresh_s=0.1, key_activation_delay_s=0.6)
    client = app.test_client()
    before = _checkin(client, tokens["device"], gps=HAVANA).get_json()

    # Another process (the CLI) rotates: the new key is listed at once, signs after the delay.
    new = _ring(redis, app, activation_delay_s=0.6, refresh_s=0.1).rotate(grace_days=7)
    assert new.kid != before["kid"]
    time.sleep(0.15)
    assert list(_jwks(client, tokens)) == [before["kid"], new.kid]
    deadline = time.monotonic() + 10
    after = before
    while after["kid"] != new.kid and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _checkin(client, tokens["device"], gps=HAVANA).get_json()
    assert after["kid"] == new.kid
    assert time.time() >= new.active_from

    jwks = _jwks(client, tokens)
    assert list(jwks) == [new.kid, before["kid"]]  # the signing key first
    assert firmware_verifies(before, jwks) and firmware_verifies(after, jwks)


def test_old_key_is_withdrawn_when_its_grace_ends(redis, tmp_path):
    ring = _ring(redis, folder=tmp_path, activation_delay_s=10).ensure(now=1_000_000.0)
    first = ring.active_kid
    second = ring.rotate(grace_days=1, now=1_000_100.0)
    assert second.active_from == 1_000_110.0
    # Listed before it signs; the first signs until then.
    assert [j["kid"] for j in ring.jwks(now=1_000_105.0)["keys"]] == [first, second.kid]
    assert [j["kid"] for j in ring.jwks(now=1_000_200.0)["keys"]] == [second.kid, first]
    # Published for the grace after its last possible use plus the activation delay.
    until = 1_000_110.0 + 10 + 86_400
    assert [j["kid"] for j in ring.jwks(now=until - 1)["keys"]] == [second.kid, first]
    assert [j["kid"] for j in ring.jwks(now=until)["keys"]] == [second.kid]
    # The next rotation forgets it entirely, sealed private key included.
    ring.rotate(grace_days=1, now=until + 1)
    assert first not in redis.hgetall(keys.SIGNING_KEYS)
    assert first not in {row["kid"] for row in ring.describe(now=until + 1)}


def test_zero_grace_keeps_the_old_key_until_no_worker_can_use_it(redis, tmp_path):
    ring = _ring(redis, folder=tmp_path, activation_delay_s=10).ensure(now=1_000_000.0)
    first = ring.active_kid
    second = ring.rotate(grace_days=0, now=1_000_100.0)
    assert first != second.kid
    for now, listed in (
        (1_000_100.0, [first, second.kid]),
        (1_000_109.9, [first, second.kid]),  # the first still signs
        (1_000_119.9, [second.kid, first]),  # a late worker's last use + the delay
        (1_000_120.0, [second.kid]),
    ):
        assert [j["kid"] for j in ring.jwks(now=now)["keys"]] == listed, now
    states = {row["kid"]: row["state"] for row in ring.describe(now=1_000_105.0)}
    assert states == {first: "signing", second.kid: "next"}


def test_secrets_are_owner_only_and_redis_holds_no_usable_private_key(app, tmp_path, redis):
    ring_dir = app.extensions["regionlock"].settings.key_ring_dir
    assert ring_dir == tmp_path / "var" / "keys"
    assert stat.S_IMODE(os.stat(ring_dir).st_mode) == 0o700
    assert {f.name for f in ring_dir.iterdir()} == {
        KEK_NAME,
        "console-secret-key",
        "unlock-master-key",
    }
    for path in ring_dir.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    [record] = [orjson.loads(raw) for raw in redis.hvals(keys.SIGNING_KEYS)]
    private = app.extensions["regionlock"].keys._snapshot.private[record["kid"]]
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    dump = orjson.dumps(redis.hgetall(keys.SIGNING_KEYS))
    assert b64url(raw).encode() not in dump and raw.hex().encode() not in dump
    # Sealed under the KEK: another KEK does not open it.
    other = KeyRing(SigningKeyStore(redis), SharedSecret(KEK_NAME, b"x" * 32, "test"))
    with pytest.raises(KeyRingError, match=f"signing key {record['kid']} cannot sign here"):
        other.sign({"a": 1})


def test_keys_dir_from_the_environment(monkeypatch, tmp_path):
    from service.config import load_settings

    settings = load_settings(environ={"REGIONLOCK_KEYS_DIR": str(tmp_path / "elsewhere")})
    assert settings.key_ring_dir == tmp_path / "elsewhere"


def test_an_unreadable_ring_does_not_stop_signing(make_app, tokens, redis, caplog):
    app = make_app(keys_refresh_s=0.05)
    client = app.test_client()
    kid = _checkin(client, tokens["device"]).get_json()["kid"]
    redis.hset(keys.SIGNING_KEYS, "2030-01-a", "{not json")
    redis.incr(keys.SIGNING_KEYS_VERSION)
    time.sleep(0.1)
    answer = _checkin(client, tokens["device"]).get_json()
    assert answer["kid"] == kid and firmware_verifies(answer, _jwks(client, tokens))
    assert "signing key record 2030-01-a is unreadable" in caplog.text
    assert list(_jwks(client, tokens)) == [kid]


def test_a_worker_that_cannot_reread_the_ring_stops_signing_after_half_the_delay(
    make_app, tokens, redis
):
    # Its view could miss a rotation: past half the activation delay it might sign with a key
    # the other hosts stop publishing, so it answers 503 instead (as check-ins do anyway
    # while Redis is away); the key set stays served from memory.
    app = make_app(keys_refresh_s=0.05, key_activation_delay_s=0.4)
    ring = app.extensions["regionlock"].keys
    assert ring.sign({"a": 1})["kid"]
    ring.store = _Unreachable()
    time.sleep(0.06)
    assert ring.sign({"a": 1})["kid"]  # fresh enough
    time.sleep(0.25)
    with pytest.raises(redis_lib.ConnectionError):
        ring.sign({"a": 1})
    assert ring.jwks()["keys"]


class _Unreachable:
    def read(self):
        raise redis_lib.ConnectionError("away")


def test_a_ring_kept_on_disk_by_an_earlier_version_is_imported(make_app, tokens, tmp_path):
    folder = tmp_path / "var" / "keys"
    folder.mkdir(parents=True)
    old_keys = {}
    for kid in ("2026-10-a", "2026-11-a", "2026-09-a"):
        old_keys[kid] = Ed25519PrivateKey.generate()
        (folder / f"{kid}.pem").write_bytes(
            old_keys[kid].private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    now = time.time()
    ring = {
        "active": "2026-11-a",
        "keys": [
            {"kid": "2026-09-a", "created_at": now - 90 * 86400, "publish_until": now - 10},
            {"kid": "2026-10-a", "created_at": now - 30 * 86400, "publish_until": now + 86400},
            {"kid": "2026-11-a", "created_at": now - 86400, "publish_until": None},
        ],
    }
    (folder / "ring.json").write_bytes(orjson.dumps(ring))
    client = make_app().test_client()
    answer = _checkin(client, tokens["device"]).get_json()
    assert answer["kid"] == "2026-11-a"
    jwks = _jwks(client, tokens)
    assert list(jwks) == ["2026-11-a", "2026-10-a"]  # the withdrawn one stays withdrawn
    public = old_keys["2026-11-a"].public_key()
    public.verify(b64url_decode(answer["signature"]), signed_bytes(answer))
    assert firmware_verifies(answer, jwks)


def test_private_keys_never_reach_logs_or_answers(make_app, tokens, redis, caplog):
    caplog.set_level(logging.DEBUG)
    app = make_app(keys_refresh_s=0.05, key_activation_delay_s=0.1)
    client = app.test_client()
    _ring(redis, app, refresh_s=0.05, activation_delay_s=0.1).rotate(grace_days=1)
    time.sleep(0.2)
    bodies = [
        _checkin(client, tokens["device"]).data,
        client.get("/v1/keys", headers=bearer(tokens["device"])).data,
    ]
    private = app.extensions["regionlock"].keys._snapshot.private
    assert len(private) == 2
    for key in private.values():
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        for secret in (b64url(raw), raw.hex()):
            assert secret not in caplog.text
            assert all(secret.encode() not in body for body in bodies)


def test_kids_name_the_month_and_never_repeat():
    now = 1_795_000_000.0  # 2026-11
    assert next_kid(set(), now) == "2026-11-a"
    assert next_kid({"2026-11-a"}, now) == "2026-11-b"
    taken = {f"2026-11-{chr(c)}" for c in range(ord("a"), ord("z") + 1)}
    assert next_kid(taken, now) == "2026-11-aa"
    assert next_kid(taken | {"2026-11-aa"}, now) == "2026-11-ab"
    assert next_kid({"2026-10-a"}, now) == "2026-11-a"


def test_cli_rotate_and_list(redis, redis_url, tmp_path, monkeypatch):
    from service.cli import main
    from service.store.audit import AuditStore

    monkeypatch.setenv("REGIONLOCK_KEYS_DIR", str(tmp_path / "ring"))
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "rotate", "--actor", "ops-1"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, ["keys", "rotate", "--grace-days", "3"])
    assert second.exit_code == 0, second.output
    kid_1, kid_2 = first.stdout.strip(), second.stdout.strip()
    assert "signs from" in second.stderr
    listed = runner.invoke(main, ["keys", "list"])
    assert listed.exit_code == 0
    rows = [line.split("\t") for line in listed.stdout.strip().splitlines()]
    # The new key waits out the activation delay (10 s by default) before it signs.
    assert [(r[0], r[1]) for r in rows] == [(kid_2, "next"), (kid_1, "signing")]
    entries, _ = AuditStore(redis).query(action="keys.rotate")
    assert [e["detail"]["kid"] for e in entries] == [kid_2, kid_1]
    assert entries[0]["detail"]["previous"] == kid_1
    assert entries[1]["actor"] == "ops-1"
    assert runner.invoke(main, ["keys", "rotate", "--grace-days", "-1"]).exit_code != 0


def test_cli_with_another_kek_refuses_to_rotate(redis, redis_url, tmp_path, monkeypatch):
    from service.cli import main

    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    monkeypatch.setenv("REGIONLOCK_KEYS_DIR", str(tmp_path / "host-a"))
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "rotate"]).exit_code == 0
    before = redis.hgetall(keys.SIGNING_KEYS)
    monkeypatch.setenv("REGIONLOCK_KEYS_DIR", str(tmp_path / "host-b"))
    refused = runner.invoke(main, ["keys", "rotate"])
    assert refused.exit_code == 2
    recorded = redis.hget(keys.SECRET_IDS, KEK_NAME)
    local = load_shared_secret(KEK_NAME, tmp_path / "host-b" / KEK_NAME).id
    assert recorded in refused.stderr and local in refused.stderr and recorded != local
    assert redis.hgetall(keys.SIGNING_KEYS) == before
    ids = runner.invoke(main, ["keys", "ids"])
    assert f"{KEK_NAME}\t{recorded}\t{local}\tMISMATCH" in ids.stdout
