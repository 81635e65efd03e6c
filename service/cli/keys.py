"""`regionlock keys ...`: the deployment's verdict signing keys (in Redis) and shared secrets."""

from __future__ import annotations

import click

from service.cli.common import ACTOR_OPTION, actor_name, fail, redis_client
from service.config import ConfigError, Settings, load_settings
from service.crypto.secrets import SecretError, SharedSecret, ensure_shared, load_shared_secret
from service.crypto.signing import DEFAULT_GRACE_DAYS, KEK_NAME, KeyRing, KeyRingError


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


def _kek(settings: Settings) -> SharedSecret:
    return load_shared_secret(KEK_NAME, settings.key_ring_dir / KEK_NAME, settings.signing_kek_file)


def _ring(client, settings: Settings) -> KeyRing:
    """The deployment's ring, after checking that this host's key-encryption key is the
    deployment's (a key sealed under another one would not open on the servers)."""
    from service.store.secret_ids import SecretIdStore
    from service.store.signing_keys import SigningKeyStore

    kek = _kek(settings)
    ensure_shared(kek, SecretIdStore(client))
    return KeyRing(
        SigningKeyStore(client),
        kek,
        refresh_s=settings.keys_refresh_s,
        activation_delay_s=settings.key_activation_delay_s,
    )


@click.group("keys")
def keys_group() -> None:
    """Rotate and list the deployment's verdict signing keys; check the shared secrets."""


@keys_group.command("rotate")
@click.option(
    "--grace-days",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE_DAYS,
    show_default=True,
    help="how long the previous key stays published at /v1/keys after the new one takes over",
)
@ACTOR_OPTION
def keys_rotate(grace_days: float, actor: str | None) -> None:
    """One new signing key for every host: published at once, signing a few seconds later
    (REGIONLOCK_KEY_ACTIVATION_DELAY_S, default 10), when every host lists it."""
    from service.engine.model import iso_utc
    from service.store.audit import AuditStore

    settings = _settings()
    who = actor_name(actor)
    with redis_client() as client:
        audit = AuditStore(client)

        def fields(action: str, detail: dict) -> dict:
            return audit.entry_fields(who, "admin", action, None, detail)

        try:
            ring = _ring(client, settings)
            if not ring.store.read()[1]:  # nothing to rotate yet: the first key
                ring.ensure(audit=fields, legacy_dir=settings.key_ring_dir)
                click.echo(ring.active_kid)
                return
            info = ring.rotate(grace_days=grace_days, audit=fields)
        except (KeyRingError, SecretError) as exc:
            fail(str(exc))
    click.echo(f"signs from {iso_utc(info.active_from)}", err=True)
    click.echo(info.kid)


@keys_group.command("list")
def keys_list() -> None:
    """List keys: kid, state (next, signing, published, expired), created, published until,
    signs from."""
    from service.engine.model import iso_utc as iso

    settings = _settings()
    with redis_client() as client:
        try:
            rows = _ring(client, settings).describe()
        except (KeyRingError, SecretError) as exc:
            fail(str(exc))
    for row in rows:
        until = iso(row["publish_until"]) if row["publish_until"] is not None else "-"
        click.echo(
            f"{row['kid']}\t{row['state']}\t{iso(row['created_at'])}\t{until}"
            f"\t{iso(row['active_from'])}"
        )


@keys_group.command("ids")
def keys_ids() -> None:
    """The ids of the secrets every host must share: recorded in Redis, and this host's."""
    from service.console.security import load_secret_key
    from service.store.secret_ids import SecretIdStore

    settings = _settings()
    try:
        mine = {KEK_NAME: _kek(settings)}
        console = load_secret_key(settings.key_ring_dir, settings.secret_key_file)
        mine[console.name] = console
    except SecretError as exc:
        fail(str(exc))
    with redis_client() as client:
        recorded = SecretIdStore(client).recorded()
    for name in sorted(set(recorded) | set(mine)):
        local = mine[name].id if name in mine else "-"
        status = "ok" if recorded.get(name) == local else "MISMATCH"
        if name not in recorded:
            status = "not recorded"
        click.echo(f"{name}\t{recorded.get(name, '-')}\t{local}\t{status}")


@keys_group.command("forget-id")
@click.argument("name")
@ACTOR_OPTION
def keys_forget_id(name: str, actor: str | None) -> None:
    """Forget the recorded id of secret NAME, after handing every host a new one: the next host
    to start records the new id. Audited."""
    from service.store.audit import AuditStore
    from service.store.secret_ids import SecretIdStore

    if name == KEK_NAME:
        # The signing keys in Redis are sealed under it: a new one could not open them.
        fail(f"the {KEK_NAME} cannot be replaced this way (the signing keys are sealed under it)")
    with redis_client() as client:
        fields = AuditStore(client).entry_fields(
            actor_name(actor), "admin", "secrets.forget_id", None, {"name": name}
        )
        if not SecretIdStore(client).forget(name, fields):
            fail(f"no id recorded for {name!r}")
    click.echo(f"forgot the id of {name}", err=True)
