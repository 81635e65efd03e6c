"""`regionlock keys ...`: the Ed25519 key ring that signs verdicts (REGIONLOCK_KEYS_DIR)."""

from __future__ import annotations

import sys

import click

from service.cli.common import redis_client
from service.config import ConfigError, load_settings
from service.crypto.signing import DEFAULT_GRACE_DAYS, KeyRing, KeyRingError


def _ring() -> KeyRing:
    try:
        return KeyRing(load_settings().key_ring_dir)
    except ConfigError as exc:
        click.echo(f"regionlock: {exc}", err=True)
        sys.exit(2)


@click.group("keys")
def keys_group() -> None:
    """Rotate and list the keys that sign verdicts (private keys never leave the key folder)."""


@keys_group.command("rotate")
@click.option(
    "--grace-days",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE_DAYS,
    show_default=True,
    help="how long the previous key stays published at /v1/keys",
)
def keys_rotate(grace_days: float) -> None:
    """Add a new signing key; running workers switch to it within a second."""
    from service.store.audit import AuditStore

    ring = _ring()
    try:
        if ring.exists():
            previous: str | None = ring.active_kid
            kid = ring.rotate(grace_days=grace_days)
        else:  # nothing to rotate yet: the first key
            previous, kid = None, ring.ensure().active_kid
    except KeyRingError as exc:
        click.echo(f"regionlock: {exc}", err=True)
        sys.exit(2)
    with redis_client() as client:
        AuditStore(client).append(
            "cli",
            "admin",
            "keys.rotate",
            detail={"kid": kid, "previous": previous, "grace_days": grace_days},
        )
    click.echo(kid)


@keys_group.command("list")
def keys_list() -> None:
    """List keys: kid, state (signing, published, expired), created, published until."""
    from service.engine.model import iso_utc as iso

    try:
        rows = _ring().describe()
    except KeyRingError as exc:
        click.echo(f"regionlock: {exc}", err=True)
        sys.exit(2)
    for row in rows:
        until = iso(row["publish_until"]) if row["publish_until"] is not None else "-"
        click.echo(f"{row['kid']}\t{row['state']}\t{iso(row['created_at'])}\t{until}")
