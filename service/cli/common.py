"""What every `regionlock` command shares: failing with exit 2, the Redis client, the actor."""

from __future__ import annotations

import contextlib
import getpass
import os
import sys

import click

from service.config import ConfigError, load_settings
from service.store.server import EmbeddedRedisError, redis_url_for


def fail(message: str) -> None:
    """Print MESSAGE as the command's error and exit 2 (the command could not run)."""
    click.echo(f"regionlock: {message}", err=True)
    sys.exit(2)


@contextlib.contextmanager
def redis_client():
    """A Redis client for CLI commands (the embedded server's data when no URL is set)."""
    from service.store.client import connect_redis

    try:
        settings = load_settings()
        with redis_url_for(settings.redis_url, settings.var_dir / "redis") as url:
            client = connect_redis(url, settings)
            yield client
    except (ConfigError, EmbeddedRedisError) as exc:
        fail(str(exc))


def actor_name(actor: str | None) -> str:
    """The name audit entries carry for a CLI user: --actor, else cli:<the OS user>."""
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


#: The --actor option every command that writes an audit entry takes.
ACTOR_OPTION = click.option(
    "--actor", default=None, help="name written to the audit trail (default cli:<OS user>)"
)
