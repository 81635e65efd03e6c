"""`regionlock token ...`: API tokens (only their hashes are stored)."""

from __future__ import annotations

import click

from service.cli.common import fail, redis_client


@click.group()
def token() -> None:
    """Create, revoke and list API tokens."""


@token.command("create")
@click.option("--role", required=True, help="device, agent, compliance, editor, auditor or admin")
@click.option("--name", required=True, help="a unique name; audit entries carry it")
def token_create(role: str, name: str) -> None:
    """Create a token and print it, alone, on standard output (only its hash is kept)."""
    from service.store.audit import AuditStore
    from service.store.tokens import TokenError, TokenStore

    with redis_client() as client:
        try:
            secret = TokenStore(client).create(name=name, role=role)
        except TokenError as exc:
            fail(str(exc))
        AuditStore(client).append(
            "cli", "admin", "token.create", detail={"name": name, "role": role}
        )
    click.echo(secret)


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke the token called NAME."""
    from service.store.audit import AuditStore
    from service.store.tokens import TokenError, TokenStore

    with redis_client() as client:
        try:
            principal = TokenStore(client).revoke(name)
        except TokenError as exc:
            fail(str(exc))
        AuditStore(client).append(
            "cli", "admin", "token.revoke", detail={"name": name, "role": principal.role}
        )
    click.echo(f"revoked {name}", err=True)


@token.command("list")
def token_list() -> None:
    """List tokens: name, role, creation time (never the token)."""
    from service.engine.model import iso_utc as iso
    from service.store.tokens import TokenStore

    with redis_client() as client:
        for row in TokenStore(client).list():
            click.echo(f"{row['name']}\t{row['role']}\t{iso(row['created_at'])}")
