"""`regionlock facts ...`: recorded check-in facts (privacy retention)."""

from __future__ import annotations

import click

from service.cli.common import redis_client
from service.config import load_settings


@click.group()
def facts() -> None:
    """Recorded check-in facts (privacy retention)."""


@facts.command("sweep")
def facts_sweep() -> None:
    """Remove check-in facts older than REGIONLOCK_FACTS_RETENTION_DAYS (serve does it too)."""
    from service.devices.retention import sweep
    from service.store.devices import DeviceStore

    settings = load_settings()
    with redis_client() as client:
        report = sweep(DeviceStore(client), settings.facts_retention_days)
    click.echo(
        f"devices {report.devices}, changed {report.devices_changed}, "
        f"stream entries removed {report.stream_entries_removed}"
    )
