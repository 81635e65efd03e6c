"""`regionlock token ...`: API tokens (only their hashes are stored)."""

from __future__ import annotations

import click

from service.cli.common import ACTOR_OPTION, actor_name, fail, redis_client


@click.group()
def token() -> None:
    """Create, revoke and list API tokens."""


@token.command("create")
@click.option("--role", required=True, help="device, agent, compliance, editor, auditor or admin")
@click.option("--name", required=True, help="a unique name; audit entries carry it")
@ACTOR_OPTION
def token_create(role: str, name: str, actor: str | None) -> None:
    """Create a token and print it, alone, on standard output (only its hash is kept)."""
    from service.store.audit import AuditStore
    from service.store.tokens import TokenError, TokenStore

    with redis_client() as client:
        audit = AuditStore(client).entry_fields(
            actor_name(actor), "admin", "token.create", None, {"name": name, "role": role}
        )
        try:
            secret = TokenStore(client).create(name=name, role=role, audit_fields=audit)
        except TokenError as exc:
            fail(str(exc))
    click.echo(secret)


@token.command("revoke")
@click.argument("name")
@ACTOR_OPTION
def token_revoke(name: str, actor: str | None) -> None:
    """Revoke the token called NAME."""
    from service.store.audit import AuditStore
    from service.store.tokens import TokenError, TokenStore

    with redis_client() as client:
        audit = AuditStore(client).entry_fields(
            actor_name(actor), "admin", "token.revoke", None, {"name": name}
        )
        try:
            TokenStore(client).revoke(name, audit_fields=audit)
        except TokenError as exc:
            fail(str(exc))
    click.echo(f"revoked {name}", err=True)


@token.command("list")
def token_list() -> None:
    """List tokens: name, role, creation time (never the token)."""
    from service.engine.model import iso_utc as iso
    from service.store.tokens import TokenStore

    with redis_client() as client:
        for row in TokenStore(client).list():
            click.echo(f"{row['name']}\t{row['role']}\t{iso(row['created_at'])}")
