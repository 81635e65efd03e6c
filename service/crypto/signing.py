"""Signed verdicts: the deployment's Ed25519 key ring, canonical JSON, and the public JWK set.

One ring serves every host of a deployment (SPEC §15). It lives in Redis
(``service.store.signing_keys``): per key its public half, its private half sealed with
AES-256-GCM under the *key-encryption key* (KEK) that the deployment hands every host alike
(``var/keys/signing-kek``, made on first start on a single host, or
``REGIONLOCK_SIGNING_KEK_FILE``), when it starts signing and until when it stays published. So
``GET /v1/keys`` on any host lists every key any host signs with, and one rotation makes one key
for all of them. The KEK never leaves the hosts; Redis alone holds nothing that signs.

Rotation without a gap (issue 12.10). Each worker re-reads the ring every ``refresh_s`` (1 s),
and picks the signing key by the clock: the key with the latest ``active_from`` not in the
future. A rotation writes the new key with ``active_from`` = now + ``activation_delay_s``
(10 s, longer than the re-read interval plus any clock skew between hosts), so every host
publishes it before any host signs with it. The keys it supersedes stay published until
``active_from`` + ``activation_delay_s`` + the grace period: at least their last possible use
plus the delay, even with ``--grace-days 0``. A worker that cannot re-read the ring signs with
what it has for at most half the delay, then refuses (the check-in answers 503, as it would
anyway with Redis away), so it never signs with a key the others have stopped publishing.

Signature: Ed25519 over the canonical JSON of the response without ``signature`` (``kid``
included): keys sorted, no spaces, UTF-8 (non-ASCII is not escaped), encoded base64url without
padding. The signed body holds only strings, integers, booleans, null, arrays and objects (no
floats), so any canonicaliser that sorts keys and emits compact UTF-8 JSON agrees with this one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.crypto.secrets import SharedSecret
from service.engine.model import DAY_S

log = logging.getLogger(__name__)

DEFAULT_GRACE_DAYS = 30
#: The name of the key-encryption key among the deployment's shared secrets (its id is
#: recorded in Redis: a host with another KEK refuses to start).
KEK_NAME = "signing-kek"
#: Default seconds between a rotation and the new key's first signature (see module doc).
DEFAULT_ACTIVATION_DELAY_S = 10.0
#: Default seconds between two re-reads of the ring by one worker.
DEFAULT_REFRESH_S = 1.0


class KeyRingError(RuntimeError):
    """The key ring is missing, unreadable or inconsistent."""


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Keys sorted, no whitespace, UTF-8: the exact bytes a verdict signature covers."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes a signed document's signature covers: every field but ``signature``."""
    return canonical_json({k: v for k, v in document.items() if k != "signature"})


def verify_with_jwk(document: Mapping[str, Any], jwk: Mapping[str, Any]) -> bool:
    """True when DOCUMENT's signature verifies with the Ed25519 public key JWK."""
    from cryptography.exceptions import InvalidSignature

    public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    try:
        public.verify(b64url_decode(document["signature"]), signed_bytes(document))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_jwk(kid: str, public: Ed25519PublicKey) -> dict[str, str]:
    """The RFC 8037 JWK of an Ed25519 public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw),
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    }


def next_kid(existing: set[str], now: float) -> str:
    """``YYYY-MM-a``, ``YYYY-MM-b`` … (then ``aa``, ``ab`` …): the month and the first free
    suffix, so a kid says when the key was made and never repeats."""
    month = datetime.fromtimestamp(now, UTC).strftime("%Y-%m")
    n = 0
    while True:
        suffix, value = "", n
        while True:
            suffix = chr(ord("a") + value % 26) + suffix
            value = value // 26 - 1
            if value < 0:
                break
        kid = f"{month}-{suffix}"
        if kid not in existing:
            return kid
        n += 1


def _jwk(kid: str, x: str) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key of the ring as Redis keeps it (the sealed private half aside)."""

    kid: str
    created_at: float
    #: When it starts signing (a later key's ``active_from`` ends its turn).
    active_from: float
    #: None while it signs or waits to; else when it stops being published.
    publish_until: float | None
    #: The public key, base64url (the JWK's ``x``).
    x: str

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> KeyInfo:
        """Read a stored record."""
        until = record.get("publish_until")
        return cls(
            kid=str(record["kid"]),
            created_at=float(record["created_at"]),
            active_from=float(record["active_from"]),
            publish_until=None if until is None else float(until),
            x=str(record["x"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form (without the sealed private key)."""
        return {
            "kid": self.kid,
            "created_at": self.created_at,
            "active_from": self.active_from,
            "publish_until": self.publish_until,
            "x": self.x,
        }

    def published_at(self, now: float) -> bool:
        """True when /v1/keys lists it at NOW."""
        return self.publish_until is None or self.publish_until > now


def signing_key_at(infos: tuple[KeyInfo, ...] | list[KeyInfo], now: float) -> KeyInfo | None:
    """The key that signs at NOW: the latest ``active_from`` not after NOW."""
    started = [info for info in infos if info.active_from <= now]
    if not started:
        return None
    return max(started, key=lambda info: (info.active_from, info.created_at))


class Sealer:
    """Seals private keys for Redis: AES-256-GCM under a key derived from the deployment's
    KEK, the kid as associated data (a sealed key moved to another kid does not open)."""

    def __init__(self, kek: SharedSecret):
        self.kek_id = kek.id
        self._aead = AESGCM(hashlib.sha256(b"regionlock-signing-kek-v1:" + kek.value).digest())

    def seal(self, kid: str, private: Ed25519PrivateKey) -> str:
        """The private key, sealed, as base64url text."""
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(12)
        return b64url(nonce + self._aead.encrypt(nonce, raw, kid.encode()))

    def open(self, kid: str, sealed: str, kek_id: str | None = None) -> Ed25519PrivateKey:
        """The private key of a sealed record, or KeyRingError naming the kid (never a byte)."""
        try:
            blob = b64url_decode(sealed)
            raw = self._aead.decrypt(blob[:12], blob[12:], kid.encode())
            return Ed25519PrivateKey.from_private_bytes(raw)
        except (InvalidTag, ValueError):
            raise KeyRingError(
                f"the private key {kid} does not open with this host's key-encryption key "
                f"(id {self.kek_id}; the key was sealed under {kek_id or 'another one'})"
            ) from None


class KeyStore(Protocol):
    """Where the ring is kept (``service.store.signing_keys.SigningKeyStore``)."""

    def read(self) -> tuple[int, dict[str, dict | None]]:
        """The ring's version and its records by kid (None: an unreadable record)."""
        ...

    def apply(
        self,
        expected_version: int,
        writes: dict[str, dict],
        deletes: list[str],
        audit_fields: dict | None = None,
    ) -> bool:
        """Compare-and-set: False (nothing written) when the version moved."""
        ...


#: Makes the audit entry of a ring change from its detail (the caller knows actor and role).
AuditFields = Callable[[str, dict], dict]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one worker knows of the ring: swapped whole on every re-read."""

    version: int
    keys: tuple[KeyInfo, ...]
    private: Mapping[str, Ed25519PrivateKey]
    loaded_at: float  # monotonic


class KeyRing:
    """The deployment's signing keys as this process sees them (re-read every ``refresh_s``)."""

    def __init__(
        self,
        store: KeyStore,
        kek: SharedSecret,
        refresh_s: float = DEFAULT_REFRESH_S,
        activation_delay_s: float = DEFAULT_ACTIVATION_DELAY_S,
        clock: Callable[[], float] = time.time,
    ):
        if activation_delay_s <= refresh_s:
            raise KeyRingError(
                "the key activation delay must be longer than the ring's re-read interval "
                f"({activation_delay_s} s <= {refresh_s} s)"
            )
        self.store = store
        self.sealer = Sealer(kek)
        self.refresh_s = refresh_s
        self.activation_delay_s = activation_delay_s
        self.clock = clock
        self._snapshot: _Snapshot | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    # --- set-up and rotation (first start, CLI) --------------------------------------------

    def ensure(
        self,
        audit: AuditFields | None = None,
        legacy_dir: Path | None = None,
        now: float | None = None,
    ) -> KeyRing:
        """Make the deployment's first key unless Redis holds a ring (importing the key ring
        an earlier version kept in LEGACY_DIR, when there is one); returns self."""
        while True:
            version, records = self.store.read()
            if records:
                break
            now = self.clock() if now is None else now
            writes = _import_legacy(legacy_dir, self.sealer, now) if legacy_dir else {}
            if writes:
                detail = {"imported": sorted(writes), "from": str(legacy_dir)}
                action = "keys.import"
            else:
                kid = next_kid(set(), now)
                writes = {kid: self._new_record(kid, now, active_from=now)}
                detail = {"kid": kid, "previous": None, "grace_days": None}
                action = "keys.rotate"
            fields = audit(action, detail) if audit else None
            if self.store.apply(version, writes, [], fields):
                log.info("signing key ring made", extra={"kids": sorted(writes)})
                break
            # Another host made it first: use theirs.
        self.refresh(force=True)
        return self

    def rotate(
        self,
        grace_days: float = DEFAULT_GRACE_DAYS,
        audit: AuditFields | None = None,
        now: float | None = None,
    ) -> KeyInfo:
        """One new key for the deployment, published now, signing ``activation_delay_s`` from
        now; the keys it supersedes stay published for that delay plus GRACE_DAYS after it
        takes over. Keys out of their publication are dropped. Returns the new key."""
        if grace_days < 0:
            raise KeyRingError("grace days must not be negative")
        while True:
            version, records = self.store.read()
            at = self.clock() if now is None else now
            readable = _readable(records)
            previous = signing_key_at([info for info, _ in readable.values()], at)
            kid = next_kid(set(records), at)
            active_from = at + self.activation_delay_s
            retire_at = active_from + self.activation_delay_s + grace_days * DAY_S
            writes: dict[str, dict] = {kid: self._new_record(kid, at, active_from)}
            deletes: list[str] = []
            # Unreadable records are left alone (reported by every re-read), never guessed at.
            for old_kid, (info, record) in readable.items():
                if not info.published_at(at):
                    deletes.append(old_kid)  # out of its publication: nothing may cite it
                    continue
                if info.publish_until is None:
                    # Signing now, or waiting to: its last signature is at most at
                    # ACTIVE_FROM, whatever a worker's clock or re-read says.
                    writes[old_kid] = {**record, "publish_until": retire_at}
                elif (
                    "sealed" in record
                    and info.active_from < at
                    and (previous is None or old_kid != previous.kid)
                ):
                    # Retired and superseded: it will never sign again, so its secret goes.
                    writes[old_kid] = {k: v for k, v in record.items() if k != "sealed"}
            detail = {
                "kid": kid,
                "previous": previous.kid if previous else None,
                "grace_days": grace_days,
                "signs_from": active_from,
                "previous_published_until": retire_at if previous else None,
                "dropped": sorted(deletes),
            }
            fields = audit("keys.rotate", detail) if audit else None
            if self.store.apply(version, writes, deletes, fields):
                break
        self.refresh(force=True)
        return KeyInfo.from_record(writes[kid])

    def describe(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every key with its state (``next``, ``signing``, ``published``, ``expired``), newest
        first."""
        now = self.clock() if now is None else now
        snapshot = self._current(for_signing=False)
        signing = signing_key_at(snapshot.keys, now)
        rows = []
        for info in sorted(snapshot.keys, key=lambda k: k.created_at, reverse=True):
            if info is signing:
                state = "signing"
            elif info.active_from > now and info.published_at(now):
                state = "next"
            elif info.published_at(now):
                state = "published"
            else:
                state = "expired"
            rows.append({**info.to_dict(), "state": state})
        return rows

    def _new_record(self, kid: str, now: float, active_from: float) -> dict[str, Any]:
        private = Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        info = KeyInfo(kid, now, active_from, None, b64url(raw))
        return {
            **info.to_dict(),
            "sealed": self.sealer.seal(kid, private),
            "kek_id": self.sealer.kek_id,
        }

    # --- reading ---------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Re-read the ring from the store (raises what the store raises)."""
        with self._lock:
            version, records = self.store.read()
            old = self._snapshot
            if not force and old is not None and old.version == version:
                self._snapshot = replace(old, loaded_at=time.monotonic())
                return
            infos: list[KeyInfo] = []
            private: dict[str, Ed25519PrivateKey] = {}
            for kid, record in records.items():
                if record is None:
                    log.error("signing key record %s is unreadable; left out", kid)
                    continue
                try:
                    infos.append(KeyInfo.from_record(record))
                except (KeyError, TypeError, ValueError):
                    log.error("signing key record %s is malformed; left out", kid)
                    continue
                sealed = record.get("sealed")
                if sealed is None:
                    continue  # retired for good: published for its grace, never signs again
                known = old.private.get(kid) if old is not None else None
                try:
                    private[kid] = known or self.sealer.open(kid, sealed, record.get("kek_id"))
                except KeyRingError as exc:
                    # Still published; if it is the one to sign, signing fails loudly rather
                    # than falling back on a key the other hosts may have stopped publishing.
                    log.error("%s", exc)
            if not infos:
                raise KeyRingError("no signing keys in Redis (`regionlock serve` makes one)")
            self._snapshot = _Snapshot(version, tuple(infos), private, time.monotonic())

    def _current(self, for_signing: bool, refresh: bool = True) -> _Snapshot:
        now = time.monotonic()
        if self._snapshot is None or (refresh and now >= self._next_check):
            self._next_check = now + self.refresh_s
            try:
                self.refresh()
            except Exception as exc:
                snapshot = self._snapshot
                if snapshot is None:
                    raise
                age = now - snapshot.loaded_at
                # Signing with an old view is safe for half the activation delay (see the
                # module doc); the published set may be served from memory for as long as
                # the store is away: it only ever lists more keys than the store does.
                if for_signing and age > self.activation_delay_s / 2:
                    raise
                log.warning(
                    "signing keys not re-read (%s); using the ring read %.1f s ago",
                    type(exc).__name__,
                    age,
                )
        assert self._snapshot is not None
        return self._snapshot

    # --- use -------------------------------------------------------------------------------

    @property
    def active_kid(self) -> str:
        """The kid that signs now."""
        info = signing_key_at(self._current(for_signing=True).keys, self.clock())
        if info is None:
            raise KeyRingError("no signing key is active yet")
        return info.kid

    def sign(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """DOCUMENT with ``kid`` and ``signature`` added (any old ``signature`` replaced)."""
        snapshot = self._current(for_signing=True)
        info = signing_key_at(snapshot.keys, self.clock())
        if info is None:
            raise KeyRingError("no signing key is active")
        if info.kid not in snapshot.private:
            raise KeyRingError(
                f"the signing key {info.kid} cannot sign here: its private half did not open "
                f"with this host's key-encryption key (id {self.sealer.kek_id})"
            )
        body = {k: v for k, v in document.items() if k != "signature"}
        body["kid"] = info.kid
        body["signature"] = b64url(snapshot.private[info.kid].sign(canonical_json(body)))
        return body

    def jwks(
        self, now: float | None = None, refresh: bool = True
    ) -> dict[str, list[dict[str, str]]]:
        """The JWK set of every key a verdict may cite now or soon: the signing key first,
        then the next one (published before it signs), then retired keys in their grace.
        REFRESH false: the ring as last read, without asking the store (it is away)."""
        now = self.clock() if now is None else now
        snapshot = self._current(for_signing=False, refresh=refresh)
        signing = signing_key_at(snapshot.keys, now)
        ordered = sorted(snapshot.keys, key=lambda k: (k is not signing, -k.created_at))
        return {"keys": [_jwk(info.kid, info.x) for info in ordered if info.published_at(now)]}


def _readable(records: Mapping[str, dict | None]) -> dict[str, tuple[KeyInfo, dict]]:
    """The records that parse, with their KeyInfo."""
    out = {}
    for kid, record in records.items():
        if record is None:
            continue
        try:
            out[kid] = (KeyInfo.from_record(record), record)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _import_legacy(folder: Path, sealer: Sealer, now: float) -> dict[str, dict]:
    """The records of a key ring an earlier version kept on disk (``ring.json`` and one
    PKCS#8 PEM per key), so verdicts it signed keep verifying; {} when there is none."""
    ring_file = Path(folder) / "ring.json"
    if not ring_file.exists():
        return {}
    try:
        ring = orjson.loads(ring_file.read_bytes())
        active = ring["active"]
        entries = list(ring["keys"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyRingError(
            f"cannot read the old key ring {ring_file}: {type(exc).__name__}"
        ) from None
    records: dict[str, dict] = {}
    for entry in entries:
        kid, until = str(entry["kid"]), entry.get("publish_until")
        if kid != active and (until is None or float(until) <= now):
            continue
        path = Path(folder) / f"{kid}.pem"
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise KeyRingError(f"cannot load {path}: {type(exc).__name__}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyRingError(f"{path} is not an Ed25519 key")
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        created = float(entry["created_at"])
        info = KeyInfo(kid, created, created, None if kid == active else float(until), b64url(raw))
        records[kid] = {
            **info.to_dict(),
            "sealed": sealer.seal(kid, private),
            "kek_id": sealer.kek_id,
        }
    return records
