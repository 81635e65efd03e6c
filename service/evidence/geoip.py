"""IP address -> place, from a MaxMind-format (GeoIP2 / GeoLite2 City or Country) database.

The database is opened once per process with ``MODE_MMAP_EXT`` (the C reader over a memory
map: pages are shared between forked workers and the reader is safe to use from many threads).
Without a path the GeoLite2 City database bundled in the ``maxminddb-geolite2`` package is used
(July 2018 data: fine for tests and demos, stale for production; configure a current one).
"""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime
from typing import Any

import maxminddb
import pycountry

from service.engine.model import Place

# database_type values (or parts of them) that carry a "country" per network.
_LOCATION_DB_MARKERS = ("City", "Country", "Enterprise")


@functools.cache
def subdivision_codes() -> frozenset[str]:
    """Every ISO 3166-2 code known to pycountry (loaded once; membership is O(1))."""
    return frozenset(sub.code for sub in pycountry.subdivisions)


def bundled_database_path() -> str:
    """Path of the GeoLite2 City database shipped in the ``maxminddb-geolite2`` package."""
    # The module only records the path at import; its reader opens lazily, so reading
    # ``filename`` does not map the file a second time.
    from geolite2 import geolite2

    return str(geolite2.filename)


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in TEXT (None when it is not one), an IPv4-mapped IPv6 address as IPv4.

    ::ffff:a.b.c.d is an IPv4 client seen through a dual-stack socket: it must be judged (and
    looked up: not every database aliases the mapped range) as the IPv4 address it is.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class GeoIP:
    """Looks client IP addresses up in a GeoIP2/GeoLite2 database.

    Location evidence is the record's ``country`` (where MaxMind places the network) and the
    last, most specific ``subdivisions`` entry. ``registered_country`` is deliberately ignored:
    it is where the block's owner is registered (a Cuban user of a roaming or VPN range
    registered in Spain is not in Spain), so it is no evidence of where the device is. Records
    that only know a continent (anycast, satellite, some mobile ranges) give no place.
    """

    def __init__(self, path: str | None = None, cache_size: int = 16384) -> None:
        """Open ``path`` (None: the bundled GeoLite2 City database) once, memory-mapped."""
        self.path = path if path is not None else bundled_database_path()
        self._reader = maxminddb.open_database(self.path, maxminddb.MODE_MMAP_EXT)
        database_type = self._reader.metadata().database_type
        if not any(marker in database_type for marker in _LOCATION_DB_MARKERS):
            self._reader.close()
            raise ValueError(f"{self.path}: a {database_type} database has no country data")
        # Warm the cache here so the first request does not pay for loading pycountry.
        self._subdivisions = subdivision_codes()
        # Decoding a City record (names in eight languages) is most of a lookup's ~20 us, and
        # devices behind one NAT or checking in daily repeat addresses; a hit costs < 1 us.
        self._cached_place = functools.lru_cache(maxsize=cache_size)(self._lookup)

    def place(self, ip: str) -> Place | None:
        """Country and most specific subdivision of ``ip``; None when it gives no location."""
        return self._cached_place(ip)

    def _lookup(self, ip: str) -> Place | None:
        """Uncached :meth:`place`."""
        address = parse_address(ip)
        if address is None:
            return None
        # is_global is False for private, loopback, link-local, unspecified, documentation and
        # shared (CGNAT) space; multicast and some reserved IPv6 blocks still count as global.
        if not address.is_global or address.is_multicast or address.is_reserved:
            return None
        record = self._reader.get(address)
        if not isinstance(record, dict):
            return None
        return self._place_of(record)

    def _place_of(self, record: dict[str, Any]) -> Place | None:
        """Place from a raw City/Country record (None without a country)."""
        country = record.get("country")
        code = country.get("iso_code") if isinstance(country, dict) else None
        if not code:
            return None
        subdivision = None
        subdivisions = record.get("subdivisions")
        if subdivisions:
            # MaxMind stores "43", ISO 3166-2 is "UA-43"; codes pycountry does not know
            # (retired or MaxMind-specific) are dropped rather than passed on as evidence.
            local = subdivisions[-1].get("iso_code")
            if local:
                candidate = f"{code}-{local}"
                if candidate in self._subdivisions:
                    subdivision = candidate
        return Place(code, subdivision)

    def database_info(self) -> dict[str, str | int]:
        """Type and build time of the open database (for readiness reports)."""
        metadata = self._reader.metadata()
        built = datetime.fromtimestamp(metadata.build_epoch, UTC)
        return {
            "type": metadata.database_type,
            "built_at": built.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_epoch": int(metadata.build_epoch),
            "ip_version": int(metadata.ip_version),
        }

    def close(self) -> None:
        """Release the database (no lookups may be running or follow)."""
        self._reader.close()

    def __enter__(self) -> GeoIP:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
