"""`regionlock devices ...`: support actions on many devices at once."""

from __future__ import annotations

import sys

import click

from service.cli.common import ACTOR_OPTION, actor_name, fail, redis_client


@click.group()
def devices() -> None:
    """Support actions on many devices at once."""


@devices.command("unlock")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="CSV or text file: one IMEI per line (first column); a header 'imei' is fine",
)
@click.option("--reason", required=True, help="why these devices are unlocked")
@click.option("--ticket", default=None, help="the investigation or support ticket")
@click.option(
    "--expires-in",
    "expires_in_s",
    type=click.IntRange(min=1),
    default=None,
    help="seconds until the unlocks lapse (default: until removed)",
)
@ACTOR_OPTION
@click.option(
    "--role",
    type=click.Choice(["agent", "compliance", "admin"]),
    default="compliance",
    show_default=True,
    help="scope of the unlock: agent unlocks leave sanctions locks",
)
def devices_unlock(path, reason, ticket, expires_in_s, actor, role) -> None:
    """Unlock every IMEI in FILE: invalid lines reported, valid ones applied, safe to re-run."""
    from service.devices.overrides import OutcomeUnknown, OverrideService
    from service.store.audit import AuditStore
    from service.store.devices import DeviceStore
    from service.store.identities import IdentityStore
    from service.store.tokens import Principal

    principal = Principal(name=actor_name(actor), role=role)
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = list(enumerate((line.rstrip("\n") for line in handle), start=1))
    counts = {"applied": 0, "unchanged": 0, "refused": 0, "invalid": 0}
    problems = []
    with redis_client() as client:
        service = OverrideService(DeviceStore(client), AuditStore(client), IdentityStore(client))
        with click.progressbar(length=len(lines), label="unlocking", file=sys.stderr) as bar:
            last_line = 0
            rows = service.bulk_unlock(iter(lines), principal, reason, ticket, expires_in_s)
            try:
                for row in rows:
                    counts[row["status"]] += 1
                    if row["status"] in ("invalid", "refused"):
                        problems.append(row)
                    bar.update(row["line"] - last_line)
                    last_line = row["line"]
            except OutcomeUnknown:
                fail(
                    f"Redis did not answer in time after line {last_line}: the next device's "
                    f"unlock may or may not have been applied ({counts['applied']} applied "
                    "before it). Run the same command again: devices already unlocked are "
                    "reported unchanged, none is unlocked twice."
                )
            bar.update(len(lines) - last_line)
    for row in problems:
        shown = row.get("imei") or row.get("value")
        click.echo(f"line {row['line']}: {shown}: {row['status']}: {row['error']}", err=True)
    click.echo(
        f"applied {counts['applied']}, unchanged {counts['unchanged']}, "
        f"refused {counts['refused']}, invalid {counts['invalid']}"
    )
    if counts["invalid"] or counts["refused"]:
        sys.exit(1)


@devices.command("unproven")
@click.option(
    "--since",
    "since_days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="only devices with an unproven check-in in the last DAYS days",
)
def devices_unproven(since_days) -> None:
    """List the devices that checked in without a valid proof (SPEC §13), as CSV:
    imei,unproven_checkins,last_unproven_at,proven_at. Who is left before `required`."""
    import time

    from service.devices.proofs import unproven_devices
    from service.engine.model import iso_utc
    from service.store.devices import DeviceStore

    since = time.time() - since_days * 86400 if since_days is not None else None
    count = 0
    with redis_client() as client:
        click.echo("imei,unproven_checkins,last_unproven_at,proven_at")
        for imei, unproven, last, proven in unproven_devices(DeviceStore(client), since):
            last_at = iso_utc(last) if last is not None else ""
            proven_at = iso_utc(proven) if proven is not None else ""
            click.echo(f"{imei},{unproven},{last_at},{proven_at}")
            count += 1
    click.echo(f"{count} device(s) checked in without a proof", err=True)


@devices.command("reindex")
def devices_reindex() -> None:
    """Add the devices recorded before the sampling index existed (SPEC §12.5) to it: run once
    after upgrading, before relying on simulation jobs and the publish brake's sample (a scan
    of the device records; never run two at once)."""
    from service.store.sampling import SamplingIndex

    with redis_client() as client:
        seen, added = SamplingIndex(client).reindex()
    click.echo(f"{seen} device(s) recorded, {added} added to the sampling index")
