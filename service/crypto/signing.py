"""Signed verdicts: an Ed25519 key ring on disk, canonical JSON, and the public JWK set.

The ring is a directory (``var/keys`` or ``REGIONLOCK_KEYS_DIR``) holding one PKCS#8 PEM file
per key (mode 0600) and ``ring.json``, which names the signing key and, for every older key, until
when it stays published. ``ring.json`` is replaced atomically, so a worker that re-reads it sees
either the old ring or the new one. Workers notice a rotation by its mtime (checked at most once
per ``check_interval_s``); restarting the workers (SIGHUP to the gunicorn master) also does it.

Signature: Ed25519 over the canonical JSON of the response without ``signature`` (``kid``
included): keys sorted, no spaces, UTF-8 (non-ASCII is not escaped), encoded base64url without
padding. The signed body holds only strings, integers, booleans, null, arrays and objects (no
floats), so any canonicaliser that sorts keys and emits compact UTF-8 JSON agrees with this one.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.engine.model import DAY_S

log = logging.getLogger(__name__)

RING_FILE = "ring.json"
LOCK_FILE = "ring.lock"
DEFAULT_GRACE_DAYS = 30


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


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key of the ring, as ``ring.json`` describes it."""

    kid: str
    created_at: float
    # None while the key signs or has never been retired; else when it stops being published.
    publish_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``ring.json`` form."""
        return {
            "kid": self.kid,
            "created_at": self.created_at,
            "publish_until": self.publish_until,
        }


@dataclass(frozen=True, slots=True)
class _Loaded:
    """An immutable snapshot of the ring: swapped whole when the files change."""

    stamp: tuple[int, int, int]
    active: str
    keys: tuple[KeyInfo, ...]
    private: Mapping[str, Ed25519PrivateKey]


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


class KeyRing:
    """The signing keys of this process, re-read when ``ring.json`` changes on disk."""

    def __init__(self, directory: Path | str, check_interval_s: float = 1.0):
        self.directory = Path(directory)
        self.check_interval_s = check_interval_s
        self._loaded: _Loaded | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    # --- set-up and rotation (CLI, first start) ------------------------------------------

    def exists(self) -> bool:
        """True when the folder holds a ring."""
        return (self.directory / RING_FILE).exists()

    def ensure(self, now: float | None = None) -> KeyRing:
        """Create the directory and a first key unless a ring exists; returns self."""
        with self._exclusive():
            if not (self.directory / RING_FILE).exists():
                self._add_key(now or time.time(), grace_days=0)
        self._reload(force=True)
        return self

    def rotate(self, grace_days: float = DEFAULT_GRACE_DAYS, now: float | None = None) -> str:
        """Add a key that signs from now on; the previous one stays published for GRACE_DAYS.
        Keys whose grace has ended are dropped (their private files deleted). Returns the kid."""
        if grace_days < 0:
            raise KeyRingError("grace days must not be negative")
        with self._exclusive():
            kid = self._add_key(now or time.time(), grace_days)
        self._reload(force=True)
        return kid

    def describe(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every key with its state (``signing``, ``published``, ``expired``), newest first."""
        now = now or time.time()
        loaded = self._current()
        rows = []
        for info in sorted(loaded.keys, key=lambda k: k.created_at, reverse=True):
            if info.kid == loaded.active:
                state = "signing"
            elif info.publish_until is not None and info.publish_until > now:
                state = "published"
            else:
                state = "expired"
            rows.append({**info.to_dict(), "state": state})
        return rows

    def _add_key(self, now: float, grace_days: float) -> str:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ring = self._read_ring() if (self.directory / RING_FILE).exists() else None
        keys = list(ring["keys"]) if ring else []
        kid = next_kid({k.kid for k in keys}, now)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(self.directory / f"{kid}.pem", pem)
        kept = []
        for info in keys:
            if ring and info.kid == ring["active"]:
                info = KeyInfo(info.kid, info.created_at, now + grace_days * DAY_S)
            if info.publish_until is not None and info.publish_until <= now:
                # Out of its grace: no verdict may cite it any more, so its secret can go.
                (self.directory / f"{info.kid}.pem").unlink(missing_ok=True)
                continue
            kept.append(info)
        kept.append(KeyInfo(kid, now))
        document = {"active": kid, "keys": [k.to_dict() for k in kept]}
        ring_json = orjson.dumps(document, option=orjson.OPT_INDENT_2)
        _write_private(self.directory / RING_FILE, ring_json)
        return kid

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # Two rotations at once (or first starts of several processes) must not both add a key.
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # --- reading -------------------------------------------------------------------------

    def _read_ring(self) -> dict[str, Any]:
        path = self.directory / RING_FILE
        try:
            raw = orjson.loads(path.read_bytes())
            keys = tuple(
                KeyInfo(k["kid"], float(k["created_at"]), k.get("publish_until"))
                for k in raw["keys"]
            )
            active = raw["active"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyRingError(f"cannot read the key ring {path}: {type(exc).__name__}") from None
        if active not in {k.kid for k in keys}:
            raise KeyRingError(f"{path}: the active key {active!r} is not in the ring")
        return {"active": active, "keys": keys}

    def _stamp(self) -> tuple[int, int, int]:
        st = (self.directory / RING_FILE).stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self, force: bool = False) -> None:
        with self._lock:
            try:
                stamp = self._stamp()
            except OSError:
                if self._loaded is not None and not force:
                    return  # keep signing with what we have; the ring may be mid-replace
                raise KeyRingError(
                    f"no key ring in {self.directory} (`regionlock serve` or `regionlock keys "
                    "rotate` makes one)"
                ) from None
            if not force and self._loaded is not None and self._loaded.stamp == stamp:
                return
            ring = self._read_ring()
            private: dict[str, Ed25519PrivateKey] = {}
            for info in ring["keys"]:
                path = self.directory / f"{info.kid}.pem"
                try:
                    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                except (OSError, ValueError) as exc:
                    # The message names the file, never its content.
                    raise KeyRingError(f"cannot load {path}: {type(exc).__name__}") from None
                if not isinstance(key, Ed25519PrivateKey):
                    raise KeyRingError(f"{path} is not an Ed25519 key")
                private[info.kid] = key
            self._loaded = _Loaded(stamp, ring["active"], ring["keys"], private)

    def _current(self) -> _Loaded:
        now = time.monotonic()
        if self._loaded is None or now >= self._next_check:
            self._next_check = now + self.check_interval_s
            try:
                self._reload()
            except KeyRingError as exc:
                if self._loaded is None:
                    raise
                # A broken edit of the ring must not stop check-ins: keep the keys we have.
                log.error(
                    "key ring not reloaded, still signing with %s: %s", self._loaded.active, exc
                )
        assert self._loaded is not None
        return self._loaded

    # --- use -----------------------------------------------------------------------------

    @property
    def active_kid(self) -> str:
        """The kid that signs now."""
        return self._current().active

    def sign(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """DOCUMENT with ``kid`` and ``signature`` added (any old ``signature`` replaced)."""
        loaded = self._current()
        body = {k: v for k, v in document.items() if k != "signature"}
        body["kid"] = loaded.active
        signature = loaded.private[loaded.active].sign(canonical_json(body))
        body["signature"] = b64url(signature)
        return body

    def jwks(self, now: float | None = None) -> dict[str, list[dict[str, str]]]:
        """The JWK set of every key a current verdict may cite: the signing key first, then
        retired keys still in their grace."""
        now = now or time.time()
        loaded = self._current()
        ordered = sorted(loaded.keys, key=lambda k: (k.kid != loaded.active, -k.created_at))
        return {
            "keys": [
                public_jwk(info.kid, loaded.private[info.kid].public_key())
                for info in ordered
                if info.kid == loaded.active
                or (info.publish_until is not None and info.publish_until > now)
            ]
        }


def _write_private(path: Path, data: bytes) -> None:
    """Write DATA to PATH atomically, readable by the owner alone (0600 from the first byte)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode through O_TRUNC
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
