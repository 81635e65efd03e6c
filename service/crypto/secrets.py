"""Secrets every host of one deployment shares, and the start-up check that they do (SPEC §15).

A deployment hands every host the same secret files (or variables): the key-encryption key of
the verdict signing keys, the console's secret key and, later, the unlock master key (SPEC §11).
A single host needs no set-up: a missing file is made on first start (32 random bytes, 0600).

Hosts cannot compare their files with each other, so each secret has a short public *id*, the
first 8 hex digits of its SHA-256, recorded in Redis by the first host that uses it. A host whose
secret has another id refuses to start and names both ids: "the deployment uses 1a2b3c4d, this
host has 9f8e7d6c (from /etc/regionlock/console-secret-key)". The id reveals nothing usable
about the secret (32 bits of a hash of 256 random bits).

This module knows nothing of Redis: the recorded ids are kept by any object with a ``claim``
method (``service.store.secret_ids.SecretIdStore``), and the app wires the two together.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: How many hex digits of the SHA-256 name a secret (SPEC §11, §15).
SECRET_ID_HEX = 8
#: Random bytes in a secret made on first start.
SECRET_BYTES = 32


def secret_id(value: bytes) -> str:
    """The public id of a secret: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(value).hexdigest()[:SECRET_ID_HEX]


@dataclass(frozen=True, slots=True)
class SharedSecret:
    """One secret all hosts must agree on: its name, its bytes and where this host got it."""

    name: str
    value: bytes = field(repr=False)
    source: str

    @property
    def id(self) -> str:
        """The secret's public id (see :func:`secret_id`)."""
        return secret_id(self.value)


class SecretError(RuntimeError):
    """A shared secret is unreadable, malformed, or not the deployment's."""


class SecretMismatch(SecretError):
    """This host's secret is not the one the deployment recorded: the host must not start."""

    def __init__(self, secret: SharedSecret, recorded_id: str):
        self.name = secret.name
        self.recorded_id = recorded_id
        self.local_id = secret.id
        super().__init__(
            f"the {secret.name} of this host (id {secret.id}, from {secret.source}) is not the "
            f"deployment's (id {recorded_id}, recorded in Redis by the first host): hand every "
            f"host the same {secret.name}"
        )


class SecretIdRegistry(Protocol):
    """Where the deployment's secret ids are recorded (Redis)."""

    def claim(self, name: str, secret_id: str) -> str:
        """Record SECRET_ID under NAME unless an id is recorded already; the recorded id."""
        ...


def ensure_shared(secret: SharedSecret, registry: SecretIdRegistry) -> None:
    """Record SECRET's id on first use; raise :class:`SecretMismatch` when the deployment
    recorded another one."""
    recorded = registry.claim(secret.name, secret.id)
    if recorded != secret.id:
        raise SecretMismatch(secret, recorded)


def read_secret_file(path: Path) -> bytes:
    """The secret in PATH: 64 hex digits (what :func:`create_secret_file` writes; whitespace
    around them ignored), else the file's bytes as they are (at least 16)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        # Names the file, never its content.
        raise SecretError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    text = raw.strip()
    if len(text) == 2 * SECRET_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(text) < 16:
        raise SecretError(f"{path} holds no secret (at least 16 bytes expected)")
    return text


def create_secret_file(path: Path) -> bytes:
    """Make PATH with 32 random bytes (as 64 hex digits), mode 0600, unless it exists; the
    secret it holds either way. O_EXCL: of two processes starting at once, one writes it and
    the other reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret_file(path)
    value = secrets.token_bytes(SECRET_BYTES)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return value


def load_shared_secret(
    name: str,
    default_path: Path,
    configured_path: Path | None = None,
    value: str | None = None,
    value_source: str = "",
) -> SharedSecret:
    """The secret NAME of this host: VALUE when given (a variable; VALUE_SOURCE names it), else
    CONFIGURED_PATH (must exist: a file the deployment hands out is never invented), else
    DEFAULT_PATH, made on first start so a single host needs no set-up."""
    if value is not None and value.strip():
        raw = value.strip().encode()
        if len(raw) < 16:
            raise SecretError(f"{value_source or name} must be at least 16 characters")
        return SharedSecret(name, raw, value_source or name)
    if configured_path is not None:
        return SharedSecret(name, read_secret_file(configured_path), str(configured_path))
    return SharedSecret(name, create_secret_file(default_path), str(default_path))
