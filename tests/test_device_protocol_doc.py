"""docs/device-protocol.md's test vectors, recomputed from the page itself (no drift)."""

from __future__ import annotations

import hashlib
import re
import time

import orjson

from service.crypto.device_keys import auth_key, check_proof, device_key, proof_header
from tests.conftest import ROOT
from tests.docvectors import section, table_rows

PAGE = (ROOT / "docs" / "device-protocol.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return section(PAGE, title)


_rows = table_rows


def _master() -> bytes:
    return bytes.fromhex(re.search(r"master key: `([0-9a-f]{64})`", PAGE).group(1))


def test_the_device_key_vectors_hold():
    rows = _rows(_section("Device key vectors"))
    assert len(rows) >= 2
    for imei, expected in rows:
        assert device_key(_master(), imei).hex() == expected


def test_the_proof_vectors_hold_and_the_server_accepts_them():
    rows = _rows(_section("Proof vectors"))
    assert len(rows) >= 4
    for number, imei, seconds, body, expected_key, header in rows:
        key = auth_key(_master(), imei)
        assert key.hex() == expected_key, number
        raw = body.encode("utf-8")
        assert orjson.loads(raw)["imei"] == imei  # a real check-in body
        assert proof_header(key, int(seconds), raw) == header, number
        assert check_proof(key, header, raw, float(seconds)).valid
        assert not check_proof(key, header, raw + b" ", float(seconds)).valid


def test_the_worked_example_is_vector_1():
    example = _section("Worked example (vector 1)")
    first = _rows(_section("Proof vectors"))[0]
    _, imei, seconds, body, key, header = first
    for part in (imei, key, f"`{body}`", f"`{seconds}`", f"X-Device-Proof: {header}"):
        assert part in example
    assert f"body ({len(body.encode())} bytes)" in example
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds))) in example


def _json_block(section: str) -> dict:
    return orjson.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))


def test_the_documented_checkin_body_is_accepted(client, tokens):
    from tests.conftest import bearer

    body = _json_block(PAGE[PAGE.index("## The check-in") :])
    response = client.post("/v1/checkin", json=body, headers=bearer(tokens["device"]))
    assert response.status_code == 200, response.get_json()
    verdict = response.get_json()
    assert verdict["nonce"] == body["nonce"] and verdict["imei"] == body["imei"]


def test_the_verdict_signature_vector_holds():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from service.crypto.signing import b64url, canonical_json, public_jwk, verify_with_jwk

    section = _section("Verdict signature vector")
    seed = bytes.fromhex(re.search(r"seed .*?: `([0-9a-f]{64})`", section).group(1))
    jwk = orjson.loads(re.search(r"public JWK .*?: `(\{.*?\})`", section).group(1))
    verdict = _json_block(section)
    [[length, digest]] = _rows(section)
    canonical = canonical_json({k: v for k, v in verdict.items() if k != "signature"})
    assert len(canonical) == int(length)
    assert hashlib.sha256(canonical).hexdigest() == digest
    assert "é".encode() in canonical  # UTF-8 as itself, never a \u escape
    key = Ed25519PrivateKey.from_private_bytes(seed)
    assert public_jwk(jwk["kid"], key.public_key()) == jwk
    assert b64url(key.sign(canonical)) == verdict["signature"]  # Ed25519 is deterministic
    assert verify_with_jwk(verdict, jwk)
    tampered = {**verdict, "verdict": "allow"}
    assert not verify_with_jwk(tampered, jwk)


def test_the_offline_timer_vectors_hold():
    from datetime import UTC, datetime, timedelta

    from service.engine.messages import offline_terms

    rows = _rows(_section("Offline timer vectors"))
    assert len(rows) >= 3
    for days, warn_days, decided, lock_s, warn_s, warns_from, locks_at in rows:
        terms = offline_terms({"lock_after_days": int(days), "warn_days": int(warn_days)})
        assert terms == {"lock_after_s": int(lock_s), "warn_after_s": int(warn_s)}
        start = datetime.fromisoformat(decided.replace("Z", "+00:00"))
        iso = lambda t: t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        assert iso(start + timedelta(seconds=int(warn_s))) == warns_from
        assert iso(start + timedelta(seconds=int(lock_s))) == locks_at
