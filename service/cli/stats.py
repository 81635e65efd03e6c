"""`regionlock stats ...`: the fleet overview's counters and locked index (SPEC §14)."""

from __future__ import annotations

import time

import click

from service.cli.common import redis_client


@click.group()
def stats() -> None:
    """Fleet overview: counters per day and the locked-devices index (SPEC §14)."""


@stats.command("backfill")
def stats_backfill() -> None:
    """Index every recorded device in the locked-devices index (once, for devices recorded
    before the index existed). Idempotent; safe while the service runs."""
    from service.devices.stats import backfill
    from service.store.devices import DeviceStore
    from service.store.fleet_stats import StatsStore

    with redis_client() as client:
        visited = backfill(StatsStore(client), DeviceStore(client))
        locked = StatsStore(client).locked_counts().get("t", 0)
    click.echo(f"devices visited {visited}, locked now {locked}")


@stats.command("sweep")
def stats_sweep() -> None:
    """One round of the sweeper `serve` runs: re-index lapsed unlocks, roll closed days up."""
    from service.devices.stats import StatsSweeper
    from service.store.fleet_stats import StatsStore

    with redis_client() as client:
        sweeper = StatsSweeper(StatsStore(client))
        now = time.time()
        lapsed = sweeper.lapse(now)
        rolled = sweeper.roll_up(now)
    click.echo(f"lapsed unlocks re-indexed {lapsed}, days rolled up {len(rolled)}")
