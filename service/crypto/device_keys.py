"""Per-device keys derived from the deployment's unlock master key (SPEC §11, §13).

Every key here is an HMAC-SHA256 of the master key (32 raw bytes) over an ASCII label and the
device's primary IMEI (its 15 digits):

- ``device_key``: the key of the offline unlock codes (SPEC §11);
- ``auth_key``: the key of the check-in proofs (SPEC §13).

Both are put in the phone at the factory (``regionlock unlock-codes device-keys``); the server
derives them again when it needs them (one HMAC each), so no per-device secret is stored.

An offline unlock code (SPEC §11) is the first 8 bytes of
``HMAC-SHA256(device_key, challenge + ":" + scope + ":" + valid_days)`` read as a big-endian
integer, modulo 10^12, written as 12 decimal digits (docs/unlock-codes.md has the test vectors).

A check-in proof is the header ``X-Device-Proof: <unix seconds>.<hex>`` where hex is
``HMAC-SHA256(auth_key, "<unix seconds>." + raw request body)`` in lower case
(docs/device-protocol.md, "Check-in proofs", has the test vectors).

Pure functions: no I/O, nothing logged (these are secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

#: The name of the master key among the deployment's shared secrets (its file's default name
#: under the keys folder, and its id's name in Redis).
MASTER_KEY_NAME = "unlock-master-key"

DEVICE_KEY_LABEL = b"regionlock-unlock-v1:"
AUTH_KEY_LABEL = b"regionlock-auth-v1:"

#: How far a proof's time may be from the server's, in seconds (SPEC §13).
PROOF_WINDOW_S = 300

#: Unlock-code scopes: ``gray`` lifts gray-market locks, ``all`` sanctions locks too (SPEC §11).
SCOPES: tuple[str, ...] = ("gray", "all")
#: The longest validity of an unlock code, in days (0: until the next successful check-in).
MAX_VALID_DAYS = 90
CHALLENGE_DIGITS = 10
CODE_DIGITS = 12

_CHALLENGE = re.compile(r"[0-9]{10}\Z")
_CODE = re.compile(r"[0-9]{12}\Z")

# "<unix seconds>.<64 lower-case hex digits>"; the time is at most 12 digits (year 33658).
_PROOF = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})\Z")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def device_key(master_key: bytes, imei: str) -> bytes:
    """The device's unlock-code key: HMAC-SHA256(master, "regionlock-unlock-v1:" + IMEI)."""
    return _hmac(master_key, DEVICE_KEY_LABEL + imei.encode("ascii"))


def auth_key(master_key: bytes, imei: str) -> bytes:
    """The device's check-in proof key: HMAC-SHA256(master, "regionlock-auth-v1:" + IMEI)."""
    return _hmac(master_key, AUTH_KEY_LABEL + imei.encode("ascii"))


def proof_mac(key: bytes, unix_seconds: str, body: bytes) -> str:
    """Lower-case hex HMAC-SHA256(KEY, UNIX_SECONDS + "." + BODY)."""
    return hmac.new(key, unix_seconds.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def proof_header(key: bytes, unix_seconds: int | str, body: bytes) -> str:
    """The ``X-Device-Proof`` value a device with auth key KEY sends with BODY at that time."""
    text = str(unix_seconds)
    return f"{text}.{proof_mac(key, text, body)}"


@dataclass(frozen=True, slots=True)
class ProofCheck:
    """What a proof header proved: ``valid``, else ``problem`` says why not (for the 401; it
    never reveals the expected MAC). ``mac`` is the header's MAC (the replay key)."""

    valid: bool
    problem: str | None = None
    mac: str | None = None


def check_proof(key: bytes, header: str | None, body: bytes, now: float) -> ProofCheck:
    """Check the ``X-Device-Proof`` HEADER of BODY with the device's auth KEY at NOW."""
    if header is None or not header.strip():
        return ProofCheck(False, "no X-Device-Proof header")
    match = _PROOF.match(header.strip())
    if match is None:
        return ProofCheck(False, "X-Device-Proof must be <unix seconds>.<64 lower-case hex digits>")
    seconds, mac = match.groups()
    if abs(int(seconds) - now) > PROOF_WINDOW_S:
        return ProofCheck(
            False, f"the proof's time is more than {PROOF_WINDOW_S} s from the server's"
        )
    if not hmac.compare_digest(proof_mac(key, seconds, body), mac):
        return ProofCheck(False, "the proof does not match this device and body")
    return ProofCheck(True, mac=mac)


def unlock_code(device_key: bytes, challenge: str, scope: str, valid_days: int) -> str:
    """The 12-digit offline unlock code for CHALLENGE (10 digits) granting SCOPE (``gray`` or
    ``all``) for VALID_DAYS (0-90) on the device whose unlock key is DEVICE_KEY (SPEC §11)."""
    if not _CHALLENGE.match(challenge):
        raise ValueError("the challenge must be 10 digits")
    if scope not in SCOPES:
        raise ValueError(f"the scope must be one of {SCOPES}")
    if isinstance(valid_days, bool) or not 0 <= valid_days <= MAX_VALID_DAYS:
        raise ValueError(f"valid_days must be 0 to {MAX_VALID_DAYS}")
    message = f"{challenge}:{scope}:{int(valid_days)}".encode("ascii")
    number = int.from_bytes(_hmac(device_key, message)[:8], "big") % 10**CODE_DIGITS
    return f"{number:0{CODE_DIGITS}d}"


def verify_code(device_key: bytes, challenge: str, code: str) -> tuple[str, int] | None:
    """What CODE grants for CHALLENGE on the device with DEVICE_KEY: ``(scope, valid_days)``,
    or None when it is no code of that device and challenge. Tries both scopes and every
    valid_days 0-90 (182 HMACs), as the firmware does; every candidate is compared in constant
    time. Never raises on bad input (a malformed challenge or code is simply None)."""
    if not isinstance(challenge, str) or not isinstance(code, str):
        return None
    if not _CHALLENGE.match(challenge) or not _CODE.match(code):
        return None
    found = None
    for scope in SCOPES:
        for days in range(MAX_VALID_DAYS + 1):
            if hmac.compare_digest(unlock_code(device_key, challenge, scope, days), code) and (
                found is None
            ):
                found = (scope, days)
    return found
