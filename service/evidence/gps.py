"""Offline reverse geocoding by borders: GPS coordinates -> country and ISO 3166-2 subdivision.

SPEC §4: the country whose borders (territorial sea included) contain the point, then the
subdivision within that country; open sea gives no place.

1. **Country, by point-in-polygon.** The time-zone polygons of timezone-boundary-builder (built
   from OpenStreetMap borders, territorial waters included; shipped in the
   ``timezonefinder-data`` wheel, read through ``timezonefinder``) give the zone containing the
   point, and tzdata's ``zone.tab`` (the ``tzdata`` package) the country of that zone. Each of
   ``zone.tab``'s zones is one country (``zone1970.tab`` merges countries, so it is not used);
   every land zone of the polygon data is in ``zone.tab``. Sea beyond the territorial waters
   answers an ``Etc/*`` zone: no place. ``Europe/Simferopol`` is Crimea and Sevastopol alone.
2. **Subdivision, within that country only.** The nearest GeoNames populated place *of the
   country the polygon gave* names the first-level division (see
   :mod:`service.evidence.gazetteer`), so the answer never crosses the border the polygon drew.
   Inside a country split into several zones by a border that matters
   (:data:`ZONE_SUBDIVISIONS`: Crimea and Sevastopol against the rest of Ukraine), only the
   places of the divisions on the zone's side are candidates: a point in Kherson oblast is
   never UA-43, and one in Crimea never Kherson's. With no candidate place within
   :data:`SUBDIVISION_MAX_KM` the answer is the country alone.
3. **Antarctica**: south of 60°S gives no place (:data:`ANTARCTIC_TREATY_LAT`).
4. **Kosovo** has no zone of its own (``zone.tab`` follows ISO 3166-1, which has no code for it):
   the ``Europe/Belgrade`` polygon covers Serbia and Kosovo, and the nearest populated place
   among both countries' decides between ``RS`` and ``XK`` (GeoNames files Kosovo's towns
   under ``XK``, as the MCC table does), :data:`ZONE_EXTRA_COUNTRIES`.

Disputed places follow the polygons (the line of actual control, as OpenStreetMap maps it),
except Ukraine, whose internationally recognised border the polygons keep: see
``docs/decisions.md`` ("GPS: disputed and special places") for the list and the reasons.

Subdivisions are approximate near internal borders (nearest town, not a polygon); the country,
which is what sanctions and territory rules mostly name, is exact to the polygon data.

Cost: :meth:`GpsGeocoder.warm` (or the first lookup) maps the polygon file (memory-mapped, so
its pages are file-backed and shared between worker processes) and loads the gazetteer (about
one second); a process holds about 50 MB more afterwards (25 MB with the old nearest-town
method). The data is loaded once per process and shared by every geocoder on the same files. A
lookup costs 1-3 µs for the zone plus a k-d tree query for the subdivision, 10-20 µs in all
(``python -m bench.bench_evidence --only speed``; docs/accuracy.md).
"""

from __future__ import annotations

import importlib.resources
import threading
from pathlib import Path

from timezonefinder import TimezoneFinder

from service.engine.model import Place
from service.evidence.gazetteer import Gazetteer, NearestIndex, chord_of_km

#: A subdivision is named only from a populated place of the country within this distance;
#: farther (the Guantánamo base, 700 km from the nearest US town; empty desert) the answer is
#: the country alone rather than a guess.
SUBDIVISION_MAX_KM = 150.0
_SUBDIVISION_MAX_CHORD = chord_of_km(SUBDIVISION_MAX_KM)

#: South of 60°S (the Antarctic Treaty area) no sovereignty is recognised: no place. The polygon
#: data shares Antarctica out among time zones (some of them a country's, such as
#: ``Africa/Johannesburg``); no country's land lies south of this line.
ANTARCTIC_TREATY_LAT = -60.0
#: Zones that hold only some first-level divisions of their country; the country's other zones
#: hold none of them. Subdivision candidates are restricted accordingly.
ZONE_SUBDIVISIONS: dict[str, frozenset[str]] = {
    "Europe/Simferopol": frozenset({"UA-43", "UA-40"}),
}
#: Zones whose polygon also covers a territory with a code of its own that ``zone.tab`` lacks.
ZONE_EXTRA_COUNTRIES: dict[str, frozenset[str]] = {
    "Europe/Belgrade": frozenset({"XK"}),
}


def read_zone_tab(path: str | Path | None = None) -> dict[str, str]:
    """Zone name -> ISO 3166-1 country, from tzdata's ``zone.tab`` (default: the ``tzdata``
    package's copy, so the version is the pinned package's, not the host's)."""
    if path is None:
        text = (
            importlib.resources.files("tzdata")
            .joinpath("zoneinfo", "zone.tab")
            .read_text(encoding="utf-8")
        )
    else:
        text = Path(path).read_text(encoding="utf-8")
    zones: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) >= 3:
            zones[fields[2]] = fields[0]
    if not zones:
        raise ValueError("zone.tab lists no zones")
    return zones


_Loaded = tuple[TimezoneFinder, "dict[str, _Zone]", Gazetteer]
# Loaded data by (gazetteer, zone.tab, boundaries) paths, None meaning the packaged default.
_SHARED: dict[tuple[object, object, object], _Loaded] = {}
_SHARED_LOCK = threading.Lock()


class _Zone:
    """What a time zone of the polygon data answers: its country, and where to look for the
    subdivision."""

    __slots__ = ("country", "index")

    def __init__(self, country: str, index: NearestIndex | None) -> None:
        self.country = country
        self.index = index

    def place(self, lat: float, lon: float) -> Place:
        """The zone's country with the subdivision of the nearest candidate populated place."""
        if self.index is None:
            return Place(self.country)
        nearest = self.index.nearest(lat, lon, _SUBDIVISION_MAX_CHORD)
        return nearest if nearest is not None else Place(self.country)


class GpsGeocoder:
    """Reverse-geocodes coordinates by border polygons (country) and populated places
    (subdivision within that country)."""

    def __init__(
        self,
        gazetteer: str | Path | Gazetteer | None = None,
        *,
        zone_tab: str | Path | None = None,
        boundaries: str | Path | None = None,
    ) -> None:
        """Prepare a geocoder; data is loaded on first use (or by :meth:`warm`).

        ``gazetteer``, ``zone_tab`` and ``boundaries`` (a timezonefinder data directory) replace
        the packaged data, for tests.
        """
        self._gazetteer_arg = str(gazetteer) if isinstance(gazetteer, Path) else gazetteer
        self._gazetteer = gazetteer if isinstance(gazetteer, Gazetteer) else Gazetteer(gazetteer)
        self._zone_tab_path = zone_tab
        self._boundaries = boundaries
        self._lock = threading.Lock()
        self._finder: TimezoneFinder | None = None
        self._zones: dict[str, _Zone] = {}

    def warm(self) -> None:
        """Load everything now (e.g. at start-up, before forking workers)."""
        self._ensure_loaded()

    def zone(self, lat: float, lon: float) -> str | None:
        """The time zone whose polygon holds the point (``Etc/...`` at sea); None for bad input."""
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # also rejects NaN
            return None
        finder = self._finder if self._finder is not None else self._ensure_loaded()
        return finder.timezone_at(lng=lon, lat=lat)

    def place(self, lat: float, lon: float) -> Place | None:
        """Country and subdivision at (lat, lon); None at sea beyond territorial waters, or for
        bad input."""
        if lat < ANTARCTIC_TREATY_LAT:
            return None
        name = self.zone(lat, lon)
        zone = self._zones.get(name) if name is not None else None
        return zone.place(lat, lon) if zone is not None else None

    def data_version(self) -> str:
        """The timezone-boundary-builder release of the polygons (e.g. ``2026c``)."""
        finder = self._finder if self._finder is not None else self._ensure_loaded()
        return str(finder.data_version)

    def _ensure_loaded(self) -> TimezoneFinder:
        """Load once; concurrent first callers wait for the one loading."""
        with self._lock:
            if self._finder is None:
                self._load()
            assert self._finder is not None
            return self._finder

    def _load(self) -> None:
        """Load the data, shared with every other geocoder on the same files in this process
        (an app per test, or per worker thread, costs one load)."""
        key = None
        if not isinstance(self._gazetteer_arg, Gazetteer):
            key = (self._gazetteer_arg, self._zone_tab_path, self._boundaries)
        with _SHARED_LOCK:
            loaded = _SHARED.get(key) if key is not None else None
            if loaded is None:
                loaded = self._read()
                if key is not None:
                    _SHARED[key] = loaded
        self._gazetteer = loaded[2]
        self._zones = loaded[1]
        self._finder = loaded[0]  # published last: place() reads _finder without the lock

    def _read(self) -> _Loaded:
        """Map the polygons, read zone.tab, and build one subdivision index per zone kind."""
        finder = TimezoneFinder(bin_file_location=self._boundaries)
        country_of_zone = read_zone_tab(self._zone_tab_path)
        # Divisions that belong to a special zone are excluded from the country's other zones.
        reserved: dict[str, frozenset[str]] = {}
        for zone_name, subdivisions in ZONE_SUBDIVISIONS.items():
            country = country_of_zone.get(zone_name)
            if country is not None:
                reserved[country] = reserved.get(country, frozenset()) | subdivisions

        self._gazetteer.load()
        indexes: dict[tuple[frozenset[str], frozenset[str] | None, bool], NearestIndex | None] = {}
        zones: dict[str, _Zone] = {}
        for zone_name, country in country_of_zone.items():
            countries = frozenset({country}) | ZONE_EXTRA_COUNTRIES.get(zone_name, frozenset())
            only = ZONE_SUBDIVISIONS.get(zone_name)
            excluded = reserved.get(country, frozenset()) if only is None else frozenset()
            key = (countries, only, bool(excluded))
            if key not in indexes:
                indexes[key] = self._gazetteer.index(
                    lambda p, cs=countries, only=only, ex=excluded: (
                        p.country in cs
                        and (only is None or p.subdivision in only)
                        and p.subdivision not in ex
                    )
                )
            zones[zone_name] = _Zone(country, indexes[key])
        return finder, zones, self._gazetteer
